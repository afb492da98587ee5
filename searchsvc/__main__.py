from searchsvc.cli.main import main

raise SystemExit(main())
