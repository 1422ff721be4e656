"""A small byte-level BPE tokenizer trained locally, for tiny test and demo models (no hub download).

Digits are split one per token (as the Qwen2 tokenizer does), so box coordinates are written digit by digit.
The family's special tokens are added whole: they are never split and decode back to themselves.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# What the tiny models need to be able to say: prompts, descriptions, labels, box text of every format.
_CORPUS = [
    "Describe the region of this image in detail.",
    "Describe this image in detail. Give the box of every object you mention.",
    "Give a detailed description of the region, with a bounding box for every object you mention.",
    "The region contains these objects: red box, green box, blue box, yellow box.",
    "Please provide the bounding box coordinate of the region this sentence describes:",
    "Output the bounding box of the object. Locate it in the image and output its bbox coordinates in JSON format.",
    "A person, a dog, a cat, a car, a bus, a bicycle, a chair, a table, a cup, a bottle, a tree, a sign.",
    "a red circle, a green square, a blue triangle, a yellow box on the left of the image, at the top right.",
    "There is a small red square next to a large blue circle. The green triangle is below the yellow box.",
    "left right top bottom middle centre center above below behind front near far small large big tiny",
    "The man is holding an umbrella; the woman wears a hat. Two people stand near the window.",
    "You are a helpful assistant. User: Assistant: USER: ASSISTANT: system user assistant",
    '```json\n[{"bbox_2d": [12, 34, 567, 890], "label": "red box"}, {"bbox_2d": [0, 5, 60, 78], "label": "dog"}]\n```',
    "[0.12, 0.34, 0.56, 0.78] [0.0, 0.5, 1.0, 0.25] [[12, 34, 567, 890]] (100,200),(300,400)",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 0.5 0.25 0.125 - + = : ; , . ! ? ' \" ( ) [ ] { } < > / \\ | _ * # @ & %",
]


def train_tokenizer(
    special_tokens: list[str], vocab_size: int = 640, extra_corpus: list[str] = ()
) -> Tokenizer:
    """A byte-level BPE tokenizer: every byte is a token, digits are single tokens, ``special_tokens`` are
    added whole (ids 0..len-1, in the given order)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*_CORPUS, *extra_corpus] * 4, trainer)
    return tok
