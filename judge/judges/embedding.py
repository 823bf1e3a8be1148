"""The offline judge's sentence encoder. The loader lives in data.embedding (the leak guard in
data/ needs it too and may not import judge/); this module keeps the judge's import path."""
from data.embedding import (BATCH, BUNDLED_LABEL, BUNDLED_PACKAGE, MAX_TOKENS,  # noqa: F401
                            WEIGHT_SUFFIXES, EmbeddingUnavailable, Encoder, bundled_model_dir,
                            check_pooling, load_encoder, weights_sha256)
