import sys

from finetune.launch.preflight import main

sys.exit(main())
