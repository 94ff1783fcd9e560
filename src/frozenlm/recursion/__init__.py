"""The recursive LM (Levine et al., AI21 2022): LM pre-training of the connector, the textual
recursion baseline and recursion only where it pays."""
