"""Converters between unimm runs and other libraries' formats."""
