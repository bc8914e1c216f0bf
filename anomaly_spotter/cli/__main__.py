import sys

from anomaly_spotter.cli.main import main

sys.exit(main())
