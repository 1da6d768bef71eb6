"""ctxpipe: a streaming context pipeline."""
