"""Training the toy world's backbones: a tiny CLIP (contrastive) and a tiny DINO (self-distilled).

``common`` holds the model shapes, the rendered-batch loader, the time budget and the zero-shot
evaluation; ``train_clip`` and ``train_dino`` are the two training loops behind
``ssrseg toy train-clip`` and ``ssrseg toy train-dino``.
"""

# The image embeddings the tiny CLIP can be trained on (`train-clip --pool`); here, free of
# torch, so that the command line can offer them without importing the trainer.
POOLS = ("mean", "cls")
