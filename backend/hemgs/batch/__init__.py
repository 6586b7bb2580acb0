"""`hemgs batch`: many scenes at many λ, one job each (docs/batch.md).

catalogue (sources or a manifest -> checked jobs), job (run_job: the one job function), results
(OUTDIR/results.jsonl, what a re-run skips), engines (a local process pool, or Ray tasks),
command (the subcommand: `add_parser`, `run`).
"""

from .command import add_parser, run

__all__ = ["add_parser", "run"]
