"""The STRIDE method, one module per stage: membership -> operators -> train -> measure -> recover."""
