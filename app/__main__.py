from ppchat.cli import main

raise SystemExit(main())
