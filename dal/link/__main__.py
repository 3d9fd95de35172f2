"""`python -m dal.link doc|acl [ROOT]`: print the topic table (docs/mqtt.md) or the broker ACL."""

import sys

from dal.link.topics import main

sys.exit(main(sys.argv[1:]))
