from firehose_mod.cli import main

# Guarded: worker processes (anyio.to_process, multiprocessing) import the main module under
# another name, and must not run the CLI again.
if __name__ == "__main__":
    raise SystemExit(main())
