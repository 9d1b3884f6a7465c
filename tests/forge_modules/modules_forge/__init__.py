"""Stand-in of Forge's ``modules_forge`` package (Forge main and Forge Neo both have it; AUTOMATIC1111's webui does
not), which the script looks for to know that it runs on Forge. Nothing of it is imported."""
