# Type stub of the cffi extension built from native/ (see native/ffibuild.py).
# cffi objects are dynamically typed; knhkd/hotpath/ring.py wraps every use.
from typing import Any

ffi: Any
lib: Any
