"""``python -m kyc_host`` is the same as the ``kyc-host`` command."""

from kyc_host.cli import main

raise SystemExit(main())
