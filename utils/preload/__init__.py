"""A preloaded interpreter (utils/preload/server.py) that starts Python scripts as forked
children with torch already imported, and its client (utils/preload/client.py): a sweep worker
starts its trials through one, and so does the test suite for the scripts it runs."""
from utils.preload.client import (PRELOAD, Server, ServedProcess, import_time_env, start_server,
                                  supported)

__all__ = ["PRELOAD", "Server", "ServedProcess", "import_time_env", "start_server", "supported"]
