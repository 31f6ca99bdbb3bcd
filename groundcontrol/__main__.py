from groundcontrol.cli import main

raise SystemExit(main())
