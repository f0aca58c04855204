from rnnkit_cli import main

raise SystemExit(main())
