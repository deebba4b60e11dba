"""The torch-free core every layer stands on: layout, prompts, scheduler, tokenizer, noise,
the artifacts manifest and store, metrics and the graph contract. Imports nothing else of qiedge."""
