#!/usr/bin/python3
# swift_server.py - run one OpenStack Swift server (or build the rings) from a
# private directory, for tests/e2e/swift.sh.  Swift reads /etc/swift unless
# told otherwise before its storage policies load, and logs to syslog
# (/dev/log, absent here): both are redirected, so nothing outside the
# directory is read or written.
#   swift_server.py rings DIR ACCOUNT_PORT CONTAINER_PORT OBJECT_PORT
#   swift_server.py run DIR CONF SECTION
import logging
import sys


def build_rings(d, ports):
    # In-process builder: 0.5 s instead of ~6 s for three swift-ring-builder runs.
    from swift.common.ring import RingBuilder
    for name, port in zip(('account', 'container', 'object'), ports):
        b = RingBuilder(4, 1, 0)  # 16 partitions, one replica, no move delay
        b.add_dev({'id': 0, 'region': 1, 'zone': 1, 'ip': '127.0.0.1', 'port': port,
                   'device': 'd0', 'weight': 100, 'meta': ''})
        b.rebalance()
        b.get_ring().save('%s/%s.ring.gz' % (d, name))


def run(d, conf, section):
    from swift.common import utils
    utils.set_swift_dir(d)

    class StderrHandler(logging.StreamHandler):
        def __init__(self, *args, **kwargs):
            logging.StreamHandler.__init__(self, sys.stderr)

    utils.ThreadSafeSysLogHandler = StderrHandler
    from swift.common.wsgi import run_wsgi
    return run_wsgi(conf, section)


if __name__ == '__main__':
    if len(sys.argv) == 6 and sys.argv[1] == 'rings':
        build_rings(sys.argv[2], [int(p) for p in sys.argv[3:6]])
        sys.exit(0)
    if len(sys.argv) == 5 and sys.argv[1] == 'run':
        sys.exit(run(sys.argv[2], sys.argv[3], sys.argv[4]))
    sys.stderr.write(__doc__ if __doc__ else 'usage: swift_server.py rings|run ...\n')
    sys.exit(2)
