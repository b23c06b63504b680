"""Speech corpora (synthetic TTS, user manifests, LibriSpeech folders, CMU clips) and features.

Everything here runs offline on CPU: audio comes from espeak-ng / flite (Debian packages) or from
files on disk, sentences from templates or the Debian ``fortunes`` files. No ray, no mlflow.

Modules, by job: `text` (normalization, CharVocab, sentence sources), `audio` (reading and
resampling), `synthesis` (TTS voices and corpus building), `corpus` (manifests, loaders,
`Utterance`), `features` (log-mel, SpecAugment, `FeatureSet`, batching), `feature_store`
(the float16 memory-mapped feature cache, built per chunk). Every name is
re-exported here; patch a function in the module that defines it.
"""

from kdsweep.speech.data.audio import SAMPLE_RATE, _resample, _torch_threads, read_audio
from kdsweep.speech.data.corpus import (
    CMU_DATA_DIR,
    MANIFEST_COLUMNS,
    Utterance,
    load_cmu_clips,
    load_librispeech_dir,
    load_manifest,
    load_user_manifest,
)
from kdsweep.speech.data.feature_store import CHUNK_UTTERANCES, MappedFeatures
from kdsweep.speech.data.features import (
    FEATURE_VERSION,
    FeatureSet,
    LogMel,
    SpecAugment,
    _file_digest,
    bucket_batches,
    featurize,
    pad_collate,
)
from kdsweep.speech.data.synthesis import (
    CORPUS_VERSION,
    DEV_FLITE,
    DEV_VARIANTS,
    ESPEAK_ACCENTS,
    ESPEAK_VARIANTS,
    FLITE_VOICES,
    TEST_FLITE,
    TEST_VARIANTS,
    _synthesize,
    build_synthetic_corpus,
    draw_tts_job,
    synthesize_jobs,
    voices_by_split,
)
from kdsweep.speech.data.text import (
    FORTUNES_DIR,
    CharVocab,
    _command_sentence,
    command_sentences,
    fortune_records,
    fortune_sentences,
    normalize_text,
    number_to_words,
    open_sentences,
)

__all__ = [
    "CHUNK_UTTERANCES", "CMU_DATA_DIR", "CORPUS_VERSION", "DEV_FLITE", "DEV_VARIANTS",
    "ESPEAK_ACCENTS", "ESPEAK_VARIANTS", "FEATURE_VERSION", "FLITE_VOICES", "FORTUNES_DIR",
    "MANIFEST_COLUMNS", "SAMPLE_RATE", "TEST_FLITE", "TEST_VARIANTS", "bucket_batches",
    "build_synthetic_corpus", "CharVocab", "command_sentences", "draw_tts_job", "FeatureSet",
    "featurize", "fortune_records", "fortune_sentences", "load_cmu_clips",
    "load_librispeech_dir", "load_manifest", "load_user_manifest", "LogMel", "MappedFeatures",
    "normalize_text", "number_to_words", "open_sentences", "pad_collate", "read_audio",
    "SpecAugment", "synthesize_jobs", "Utterance", "voices_by_split", "_command_sentence",
    "_file_digest", "_resample", "_synthesize", "_torch_threads",
]  # fmt: skip
