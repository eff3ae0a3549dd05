"""Stored data as documents: raw perceval items, enriched, da-ds and test documents, mappings."""
