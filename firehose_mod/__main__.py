from firehose_mod.cli import main

raise SystemExit(main())
