"""SPR: Spatial Preference Rewarding for grounding multimodal LLMs (arXiv 2510.14374)."""

__version__ = "0.1.0"
