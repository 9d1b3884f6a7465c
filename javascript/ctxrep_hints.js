// Tooltips for the Contextual Repulsion accordion (txt2img and img2img). Forge loads every javascript/*.js file.
(function () {
    const hints = {
        enabled: "Push the images of one batch apart in composition, pose and style (Flux.1, Kontext, Chroma, Flux.2, Qwen-Image, Z-Image, SD3/SD3.5). Off: output identical to not having the extension.",
        step_strength: "How far each image's text-stream tokens turn away from the others in one step, summed over the repelled blocks. Means the same on every model (4 to 60 blocks), resolution and block choice. 2.85 is moderate; raise it for more variety, lower it if images drift from the prompt.",
        strength: "For experts and older settings: a strength per block (the same in every repelled block). Empty: Strength is shared out over the repelled blocks. A pasted infotext from before version 0.2 fills this field and keeps its meaning.",
        window: "Fraction of the sampling steps, from the first, during which repulsion acts. 0.05 = the first step of 20 (the paper's setting), 3 of 50; the first step is always included.",
        blocks: "Which dual-stream blocks repel: all of them, one third of them (the paper finds the middle third the best trade-off between diversity and fidelity), or a custom range.",
        custom_blocks: "Block index range start:stop (stop excluded), e.g. 6:13 for the middle third of Flux's 19 double blocks.",
        single_blocks: "Flux single-stream blocks: repel all tokens (the paper's choice), only their text tokens, or none.",
        memory: "Cross-batch memory: later batches of the same generation (batch count) are also pushed away from earlier ones, so batch size 1 gets diverse too.",
        hires: "Also repel during the hires-fix second pass (off: the second pass refines what the first produced).",
        eta: "The paper's raw step size eta (e.g. 5e6 to 8e9 for Flux-dev, 5e2 to 5e6 for SD3.5-Large). 0 uses Strength instead.",
        iterations: "Inner gradient steps per block (the paper: 50 on Flux, 100 on SD3.5). Costs only a tiny amount of CPU time per block.",
        repulsion: "Contextual repulsion itself (text-stream DiTs). Turn it off to run SPELL alone.",
        spell: "SPELL: when an image's predicted result comes within the shield radius of another image of the batch, an earlier batch or the protected set, it is pushed out. Works on every model (SD1.5, SDXL, Flux, SD3). Does nothing where nothing is that close.",
        spell_radius: "Shield radius as a fraction of the typical distance between two unrelated latents at this resolution. Larger: more images are pushed, further. The infotext records the absolute value.",
        spell_overcompensation: "How far past the shield's edge a push goes: 1 lands exactly on the edge, the paper's 1.6 leaves it sooner.",
        reproduce: "When you paste the parameters of one image of a coupled batch (PNG Info > Send to, or the API's infotext) at batch size and count 1, regenerate its batch (and the earlier batches its memory needs) and keep only that image, so it comes back exactly. Off: the image runs alone and differs from the original.",
        spell_protected: "Optional: a folder of images or a .safetensors latent set, inside the folder set in Settings > Contextual Repulsion. Images are encoded with this model's VAE at the generation size; outputs are kept away from them.",
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
