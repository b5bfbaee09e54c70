"""Running suites: the runner (planning, support checks, recording), executors, the worker process, the
run-directory protocol (rows, ledger, lock, compaction, part files) and the run record."""
