"""Data: GLM tokenizers (seqio Vocabularies), seqio Tasks/Mixtures, chat/tool format, and the
packed, per-host, checkpointable grain iterator the training loop consumes (`loader.make_iterator`)."""
