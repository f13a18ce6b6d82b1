"""Gin files shipped as package data (see distill.gin_paths)."""
