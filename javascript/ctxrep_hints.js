// Tooltips for the Contextual Repulsion accordion (txt2img and img2img). Forge loads every javascript/*.js
// file. Written by tools/write_js_hints.py from lib_ctxrep/settings.py: edit the tooltips there.
(function () {
    const hints = {
        enabled: "Push the images of one batch apart in composition, pose and style. Off: output identical to not having the extension.",
        repulsion: "Contextual repulsion itself (diffusion transformers with a text stream). Turn it off to run SPELL alone.",
        step_strength: "How far each image's text-stream tokens turn away from the others in one step, summed over the repelled blocks. Means the same on every model, resolution and block choice. 2.85 is moderate; raise it for more variety, lower it if images drift from the prompt. 0: no effect.",
        window: "Fraction of the sampling steps, from the first, during which repulsion acts. 0.05 = the first step of 20 (the paper's setting), 3 of 50; the first step is always included.",
        blocks: "Which dual-stream blocks repel: all of them, one third of them (the paper finds the middle third the best trade-off between diversity and fidelity), or a custom range.",
        custom_blocks: "With Blocks = custom: a block index range start:stop (stop excluded), e.g. 6:13 for the middle third of Flux's 19 double blocks.",
        single_blocks: "Single-stream blocks of models that also have dual-stream ones (Flux.1, Chroma, Flux.2): repel all tokens (the paper's choice), only their text tokens, or none. Edit reference images are never repelled.",
        memory: "Later batches of the same job are also pushed away from earlier ones (up to 16 images), so batch size 1 gets diverse too.",
        hires: "Also repel during the hires-fix second pass (off: the second pass refines what the first produced).",
        block_strength: "For experts: a strength per repelled block instead of the step strength shared out over them. Empty: use the step strength.",
        eta: "The paper's raw step size eta (e.g. 5e6 to 8e9 for Flux-dev, 5e2 to 5e6 for SD3.5-Large). 0 uses the strengths instead.",
        iterations: "Inner gradient steps per block (the paper: 50 on Flux, 100 on SD3.5). Costs only a little CPU time per block.",
        spell: "SPELL: when an image's predicted result comes within the shield radius of another image of the batch, an earlier batch or the protected set, it is pushed out. Works on every model. Does nothing where nothing is that close.",
        spell_radius: "Shield radius as a fraction of the typical distance between two unrelated latents at this size. Larger: more images are pushed, further.",
        spell_overcompensation: "How far past the shield's edge a push goes: 1 lands exactly on the edge, the paper's 1.6 leaves it sooner.",
        spell_protected: "Optional: a folder of images or a .safetensors latent set, inside the folder set in Settings > Contextual Repulsion. Images are encoded with this model's VAE at the generation size; outputs are kept away from them.",
        reproduce: "When you paste the parameters of one image of a coupled batch at batch size and count 1, regenerate its batch (and the earlier batches its memory needs) and keep only that image, so it comes back exactly. Off: the image runs alone and differs from the original.",
    };
    onUiLoaded(function () {
        for (const tab of ["txt2img", "img2img"]) {
            for (const [name, text] of Object.entries(hints)) {
                const element = gradioApp().getElementById(`ctxrep_${tab}_${name}`);
                if (element) {
                    element.title = text;
                }
            }
        }
    });
})();
