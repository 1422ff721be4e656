"""What SPR knows about each supported model family: classes, special tokens, chat template, box format, prompts.

A family is found from ``config.model_type`` (see :func:`family_for_model_type`) and can be overridden by the
user. Everything SPR does differently per family is a field of its :class:`FamilySpec`; adding a family is
:func:`register_family` with one spec (docs/architecture.md, "Adding a model family").

Box formats (``default_fmt``), overridable per run with ``fmt=``:
- qwen2_vl: the model's own ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` on a 0-1000 grid.
- qwen2_5_vl: JSON ``bbox_2d`` in pixels of the resized model input; the geometry (``input_size``) is read
  from the processor's own resize (image_grid_thw * patch size).
- qwen3_vl, qwen3_vl_moe, qwen3_5, qwen3_5_moe: JSON ``bbox_2d`` on a relative 0-1000 grid (format qwen3_vl); patch
  16 and merge 2 from the checkpoint's preprocessor config; Qwen3.5 thinks first (its template opens ``<think>``).
- glm4v, glm4v_moe, glm46v (GLM-4.1V / 4.6V-Flash, 4.5V, 4.6V): ``<|begin_of_box|>[[x1,y1,x2,y2]]<|end_of_box|>``
  per-mille of width / height (format glm4v).
- internvl: ``<ref>..</ref><box>[[x1, y1, x2, y2]]</box>`` on a 0-1000 grid.
- llava, llava_onevision, idefics3: none of these families has one grounding format of its own (LLaVA-1.5 writes normalized floats,
  fine-tunes differ), so ``plain_norm`` (``[x1, y1, x2, y2]`` floats in 0-1 of the image) is the default. The
  tiny LLaVA resizes the whole image to a square (no centre crop) so that 0-1 coordinates cover the whole image;
  for a real LLaVA checkpoint whose processor centre-crops, choose the format that matches its training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..registry import Registry

LANGUAGE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

QWEN_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL writes no default system turn; Qwen3.5 thinks by default: the generation prompt opens <think>, and an
# assistant turn is rendered as its reasoning (the text before </think>, maybe empty) in a think block, then the
# answer, as the released templates do, so that prompt + answer stays a prefix of the rendered conversation.
QWEN3_TOKENS = [*QWEN_TOKENS, "<think>", "</think>"]

_QWEN3_USER = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
)

QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    + _QWEN3_USER
    + "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN3_5_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{% set ns = namespace(text='') %}"
    "{% if message['content'] is string %}{% set ns.text = message['content'] %}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'text' %}{% set ns.text = ns.text + c['text'] %}"
    "{% endif %}{% endfor %}{% endif %}"
    "{% set reasoning = '' %}{% set answer = ns.text %}"
    "{% if '</think>' in ns.text %}"
    "{% set reasoning = ns.text.split('</think>')[0].split('<think>')[-1].strip('\n') %}"
    "{% set answer = ns.text.split('</think>')[-1].lstrip('\n') %}{% endif %}"
    "<|im_start|>assistant\n<think>\n{{ reasoning }}\n</think>\n\n{{ answer }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n" + _QWEN3_USER + "<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)

GLM4V_TOKENS = [
    "<|endoftext|>",
    "[gMASK]",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|video|>",
    "<|begin_of_box|>",
    "<|end_of_box|>",
    "<think>",
    "</think>",
]

# GLM's turns: [gMASK]<sop>, then <|role|>\n per turn; the model thinks on its own after <|assistant|>. The released
# templates end an answer where the next <|user|> begins; the tiny one ends it with <|endoftext|> (the eos), so
# that preference training teaches where an answer stops.
GLM4V_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}<|endoftext|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] if message['content'] is string else message['content'][0]['text'] }}\n"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for content in message['content'] %}{% if content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for content in message['content'] %}{% if content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

IDEFICS3_TOKENS = (
    ["<|begin_of_text|>", "<|end_of_text|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>"]
    + ["<global-img>"]
    + [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
)

IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}<image>{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

INTERNVL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<video>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<quad>",
    "</quad>",
]

INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# The grounding prompt of the Qwen2.5-VL cookbook, which Qwen3-VL and Qwen3.5 answer in the same JSON.
QWEN_REC = 'Locate "{expression}" in the image, and output its bbox coordinates in JSON format.'


@dataclass(frozen=True)
class FamilySpec:
    name: str
    model_types: tuple[str, ...]
    """``config.model_type`` values that belong to this family."""
    model_class: str
    """transformers class name of the model (``*ForConditionalGeneration``)."""
    processor_class: str
    default_fmt: str
    """Box format the family writes (a name in ``spr.formats.available()``)."""
    rec_template: str
    """Referring-expression prompt; ``{expression}`` is replaced."""
    special_tokens: tuple[str, ...]
    chat_template: str
    eos_token: str
    pad_token: str
    bos_token: str | None = None
    extra_tokenizer_tokens: dict = field(default_factory=dict)
    """Named special tokens the processor reads from the tokenizer (e.g. InternVL's ``context_image_token``)."""
    has_video_processor: bool = False
    """transformers' processor of this family takes a video processor (which needs torchvision)."""
    language_module: str = "model.language_model"
    """Module name of the language model inside the transformers model (LoRA goes here)."""
    vision_modules: tuple[str, ...] = ("model.vision_tower", "model.multi_modal_projector")
    """Module names of the vision encoder and projector (frozen unless vision training is asked for)."""
    lora_targets: tuple[str, ...] = LANGUAGE_TARGETS
    """Names of the language model's linear layers that get LoRA."""
    images_per_prompt_nested: bool = False
    """The processor takes ``images`` as one list per prompt (Idefics3) rather than one image per prompt."""
    shared_prefill: bool = True
    """Sampling N answers per prompt prefills the prompt (images included) once and repeats its KV cache N times
    (:meth:`ModelAdapter.generate`); False keeps the prefill of every answer row on its own."""
    prompt_sharing: bool = True
    """DPO may run each pair's prompt once for both answers with a 4-d attention mask (:mod:`spr.training.prefix`).
    False where a layer sees no attention mask: Qwen3.5's linear-attention layers would let the rejected answer see
    the chosen one."""
    router_aux_loss: bool = True
    """MoE models: training adds TRL's load-balancing loss (Mixtral's) with the checkpoint's coefficient. False for
    GLM-4.5V, whose routers balance without it (sigmoid scores, grouped top-k, as DeepSeek-V3) and whose config
    names its experts ``n_routed_experts``, not the ``num_experts`` TRL 1.16 reads (it stops with an
    AttributeError); ``spr train`` and ``spr grpo`` then set ``router_aux_loss_coef`` 0."""
    tiny: Callable | None = None
    """``tiny(spec, tokenizer) -> (config, processor)`` of a tiny random model, for a family whose name
    :data:`spr.models.tiny.BUILDERS` does not know (the built-in families' builders live there, on the tiny side,
    so that this module imports nothing of it)."""


FAMILIES: Registry[FamilySpec] = Registry("model family")

BUILT_IN: list[FamilySpec] = [
    FamilySpec(
        name="qwen2_vl",
        model_types=("qwen2_vl",),
        model_class="Qwen2VLForConditionalGeneration",
        processor_class="Qwen2VLProcessor",
        default_fmt="qwen2_vl",
        rec_template="<|object_ref_start|>{expression}<|object_ref_end|>",
        special_tokens=tuple(QWEN_TOKENS),
        chat_template=QWEN_CHAT_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        has_video_processor=True,
        vision_modules=("model.visual",),
    ),
    FamilySpec(
        name="qwen2_5_vl",
        model_types=("qwen2_5_vl",),
        model_class="Qwen2_5_VLForConditionalGeneration",
        processor_class="Qwen2_5_VLProcessor",
        default_fmt="qwen2_5_vl",
        rec_template=QWEN_REC,
        special_tokens=tuple(QWEN_TOKENS),
        chat_template=QWEN_CHAT_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        has_video_processor=True,
        vision_modules=("model.visual",),
    ),
    FamilySpec(
        name="llava",
        model_types=("llava",),
        model_class="LlavaForConditionalGeneration",
        processor_class="LlavaProcessor",
        default_fmt="plain_norm",
        rec_template="Please provide the bounding box coordinate of the region this sentence describes: {expression}",
        special_tokens=("<unk>", "<s>", "</s>", "<pad>", "<image>"),
        chat_template=LLAVA_CHAT_TEMPLATE,
        eos_token="</s>",
        pad_token="<pad>",
        bos_token="<s>",
    ),
    FamilySpec(
        name="llava_onevision",
        model_types=("llava_onevision",),
        model_class="LlavaOnevisionForConditionalGeneration",
        processor_class="LlavaOnevisionProcessor",
        default_fmt="plain_norm",
        rec_template="Please provide the bounding box coordinate of the region this sentence describes: {expression}",
        special_tokens=(*QWEN_TOKENS, "<image>", "<video>"),
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        has_video_processor=True,
    ),
    FamilySpec(
        name="idefics3",
        model_types=("idefics3",),
        model_class="Idefics3ForConditionalGeneration",
        processor_class="Idefics3Processor",
        default_fmt="plain_norm",
        rec_template="Please provide the bounding box coordinate of the region this sentence describes: {expression}",
        special_tokens=tuple(IDEFICS3_TOKENS),
        chat_template=IDEFICS3_CHAT_TEMPLATE,
        eos_token="<end_of_utterance>",
        pad_token="<|end_of_text|>",
        bos_token="<|begin_of_text|>",
        language_module="model.text_model",
        vision_modules=("model.vision_model", "model.connector"),
        images_per_prompt_nested=True,
    ),
    FamilySpec(
        name="internvl",
        model_types=("internvl",),
        model_class="InternVLForConditionalGeneration",
        processor_class="InternVLProcessor",
        default_fmt="internvl",
        rec_template="Please provide the bounding box coordinate of the region this sentence describes: <ref>{expression}</ref>",
        special_tokens=tuple(INTERNVL_TOKENS),
        chat_template=INTERNVL_CHAT_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_tokenizer_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        has_video_processor=True,
    ),
    *[
        FamilySpec(
            name=name,
            model_types=(name,),
            model_class=model_class,
            processor_class="Qwen3VLProcessor",
            default_fmt="qwen3_vl",
            rec_template=QWEN_REC,
            special_tokens=tuple(QWEN3_TOKENS),
            chat_template=template,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            has_video_processor=True,
            vision_modules=("model.visual",),
            prompt_sharing=not name.startswith("qwen3_5"),
        )
        for name, model_class, template in [
            ("qwen3_vl", "Qwen3VLForConditionalGeneration", QWEN3_VL_CHAT_TEMPLATE),
            ("qwen3_vl_moe", "Qwen3VLMoeForConditionalGeneration", QWEN3_VL_CHAT_TEMPLATE),
            ("qwen3_5", "Qwen3_5ForConditionalGeneration", QWEN3_5_CHAT_TEMPLATE),
            ("qwen3_5_moe", "Qwen3_5MoeForConditionalGeneration", QWEN3_5_CHAT_TEMPLATE),
        ]
    ],
    *[
        FamilySpec(
            name=name,
            model_types=(name,),
            model_class=model_class,
            processor_class=processor,
            default_fmt="glm4v",
            rec_template="Help me to locate {expression} in the image and give me its bounding boxes.",
            special_tokens=tuple(GLM4V_TOKENS),
            chat_template=GLM4V_CHAT_TEMPLATE,
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            has_video_processor=True,
            vision_modules=("model.visual",),
            router_aux_loss=name != "glm4v_moe",
            # GLM-4.5V: attention only. PEFT rewrites gate/up/down_proj targets of this model type into its
            # fused experts' parameters (every expert trains, and LoRA dropout must be 0)
            lora_targets=LANGUAGE_TARGETS[:4] if name == "glm4v_moe" else LANGUAGE_TARGETS,
        )
        for name, model_class, processor in [
            ("glm4v", "Glm4vForConditionalGeneration", "Glm4vProcessor"),
            ("glm4v_moe", "Glm4vMoeForConditionalGeneration", "Glm4vProcessor"),
            ("glm46v", "Glm46VForConditionalGeneration", "Glm46VProcessor"),
        ]
    ],
]


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add a model family (see docs/architecture.md, "Adding a model family"); a taken name or model_type is a
    ValueError."""
    clash = [t for t in spec.model_types if family_for_model_type(t) is not None]
    if clash and spec.name not in FAMILIES:  # a taken name is the registry's error (below), not a clash
        raise ValueError(f"model_type {clash[0]!r} already belongs to {family_for_model_type(clash[0]).name}")
    return FAMILIES.register(spec.name, spec)


def available_families() -> list[str]:
    return FAMILIES.available()


def family_for_model_type(model_type: str) -> FamilySpec | None:
    for spec in FAMILIES.values():
        if model_type in spec.model_types:
            return spec
    return None


def get_family(name: str) -> FamilySpec:
    """The family registered as ``name``; an unknown name is an UnknownName (a UserError and a KeyError) that
    lists the known ones."""
    return FAMILIES.get(name)


for _spec in BUILT_IN:
    register_family(_spec)
