import sys

from fednode.demo.walkthrough import main

sys.exit(main())
