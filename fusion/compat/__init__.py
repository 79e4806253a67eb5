"""Drop-in replacements for other CTC decoders' APIs, backed by our compiled search.

Each module mirrors one library's entry point, so that moving to asrfuse is one changed
import:

:mod:`fusion.compat.pyctcdecode`
    ``build_ctcdecoder(labels, kenlm_model_path, unigrams, alpha, beta, ...)`` and the
    decoder's ``decode`` / ``decode_beams`` / ``decode_batch`` / ``decode_beams_batch``.
:mod:`fusion.compat.hf`
    ``Wav2Vec2ProcessorWithLM``: Hugging Face's processor with an n-gram LM
    (``batch_decode`` / ``decode`` / ``from_pretrained`` / ``save_pretrained``); needs the
    ``hf`` extra (transformers).
:mod:`fusion.compat.torchaudio`
    ``ctc_decoder(lexicon, tokens, lm, ...)``, torchaudio's flashlight-text decoder;
    needs torch for its emission tensors.

None of them needs the library it replaces. The modules import nothing heavy until used.
"""
