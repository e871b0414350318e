"""Stage 0's own machinery, `chainforge collect`: hybrid chain-of-thought data from a reasoner and a
grounding model. Used by `chainforge.stages.collect` only; the clients it drives are
`chainforge.providers` (which never import this package), the step rules `chainforge.steps`.

The parts, one job each:
- `journal`: the append-only journal and failed.jsonl that make a run resumable;
- `rows`: the contract's columns and the dataset built from the journal;
- `engine`: the concurrent loop tying them together; `progress`: bar and summary.
"""
