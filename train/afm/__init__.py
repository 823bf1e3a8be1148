"""Apple's on-device text model (AFM text v7) as a first-class transformers + PEFT model.

Importing this package registers `afm_text_v7` with AutoConfig / AutoModel / AutoModelForCausalLM,
so a folder written by `save_pretrained` reloads with the Auto classes (no remote code).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from train.afm.configuration import AFM_26_0_SIGNATURE, LORA_TARGET_MODULES, AFMTextV7Config, tiny_config
from train.afm.loader import base_info_for, is_afm_assets, load_afm
from train.afm.modeling import AFMTextV7ForCausalLM, AFMTextV7Model
from train.afm.rope import permute_rope_rows
from train.afm.tokenizer import DEFAULT_SYSTEM_MESSAGE, build_afm_tokenizer

AutoConfig.register(AFMTextV7Config.model_type, AFMTextV7Config, exist_ok=True)
AutoModel.register(AFMTextV7Config, AFMTextV7Model, exist_ok=True)
AutoModelForCausalLM.register(AFMTextV7Config, AFMTextV7ForCausalLM, exist_ok=True)

__all__ = [
    "AFM_26_0_SIGNATURE",
    "DEFAULT_SYSTEM_MESSAGE",
    "LORA_TARGET_MODULES",
    "AFMTextV7Config",
    "AFMTextV7ForCausalLM",
    "AFMTextV7Model",
    "base_info_for",
    "build_afm_tokenizer",
    "is_afm_assets",
    "load_afm",
    "permute_rope_rows",
    "tiny_config",
]
