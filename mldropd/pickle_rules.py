"""What the static pickle scan refuses, and why: one place for the rules, judged per name.

A name is what a pickle reaches: an imported global (`sklearn.pipeline.Pipeline`), an attribute
path through modules (`tempfile._os.system`), or a method looked up on an object the pickle
built (`pathlib.PosixPath(...).write_text`). Every dotted segment is judged, not only the
module prefix: a library's private alias of `os` (`tempfile._os`, `random._os`) or a dunder
(`print.__self__`, `x.__dict__`, `f.__globals__`) reaches anything. The scan is a tripwire that
names what a file imports; the sandbox that loads the file is the wall.
"""

from __future__ import annotations


def names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Entries ending in ".*" refuse a module and everything under it; others are exact names.
DANGEROUS: frozenset[str] = names(
    # processes, shells, signals
    "os.* posix.* nt.* subprocess.* _posixsubprocess.* pty.* commands.* multiprocessing.* "
    "signal.* asyncio.* platform.* threading.* _thread.* concurrent.* "
    # the interpreter, imports, text evaluated as code, code objects built by hand
    "sys.* importlib.* imp.* pkgutil.* runpy.* code.* codeop.* pdb.* bdb.* timeit.* doctest.* "
    "zipimport.* logging.config.* typing.get_type_hints typing._eval_type inspect.* "
    "dataclasses._create_fn types.CodeType types.FunctionType types.LambdaType "
    "profile.* cProfile.* trace.* pydoc.* webbrowser.* marshal.* distutils.* setuptools.* "
    "pip.* ctypes.* _ctypes.* cffi.* numpy.ctypeslib.* gc.* builtins.__build_class__ "
    # files, and nested pickles this scan would not see
    "shutil.* shelve.* pickle.* _pickle.* cloudpickle.* joblib.* _pyio.* io.open io.open_code "
    "io.FileIO _io.open _io.open_code _io.FileIO codecs.open tempfile.* fileinput.* glob.* "
    "zipfile.* tarfile.* "
    "numpy.load numpy.fromfile numpy.memmap numpy.lib.format.* numpy.lib._format_impl.* "
    "numpy.lib.npyio.* numpy.lib._npyio_impl.* "
    "pandas.read_pickle pandas.io.pickle.* pandas.compat.pickle_compat.* "
    "torch.load torch.serialization.* torch.jit.* torch.package.* "
    # network
    "socket.* _socket.* ssl.* socketserver.* urllib.* urllib3.* http.* requests.* httpx.* "
    "aiohttp.* ftplib.* smtplib.* telnetlib.* poplib.* imaplib.* xmlrpc.* "
    # builtins that evaluate, import, open files or reach globals
    "builtins.eval builtins.exec builtins.compile builtins.__import__ builtins.open "
    "builtins.input builtins.breakpoint builtins.globals builtins.locals builtins.vars "
    "builtins.exit builtins.quit builtins.help builtins.memoryview "
    # attribute access or calls by a name computed at load time; raw C pointers
    "operator.attrgetter operator.methodcaller types.CapsuleType"
)

# Everything else under `dill` is refused (dill.loads, dill.source, dill.temp, _unmarshal, ...).
_DILL_HELPERS = (
    "_create_function _create_code _create_cell _create_type _load_type _create_array "
    "_create_dtypemeta _create_namedtuple _create_ftype _create_typing_tuple _create_lock "
    "_create_rlock _create_stringi _create_stringo _create_weakref _create_weakproxy _setitems "
    "_import_module _get_attr _getattr _eval_repr _setattr _delattr _dictproxy_helper"
)
DILL_ALLOWED: frozenset[str] = names(
    "dill dill._dill dill._shims dill._shims._setattr dill._shims._delattr"
) | {f"dill._dill.{name}" for name in _DILL_HELPERS.split()}

# Module names that, as a later segment (`somelib.os`, `tempfile._os`), are an alias of the
# module itself: a library's `import os as _os` makes `lib._os.system` reach os.system.
_ALIAS_MODULES = names(
    "os posix nt sys subprocess builtins importlib ctypes socket shutil pty runpy "
    "multiprocessing pickle cpickle marshal dill cloudpickle joblib posixsubprocess io "
    "codecs tempfile pathlib threading thread imp gc"
)
# Real names whose segments look like aliases but are the library's own modules.
_ALIAS_EXEMPT = ("numpy.random._pickle.", "pandas.io.", "pandas._libs.", "pyarrow.io.")
# Dunders a pickle legitimately names: dill's main-module globals, protocol 2 constructors.
_DUNDERS_OK = names("__main__ __new__ __newobj__ __newobj_ex__")
# Attributes that read, write or delete files, run commands or load nested pickles, whatever
# object they are looked up on (`getattr(x, "write_text")` on something the scan cannot name).
DANGEROUS_METHODS = names(
    "system popen spawnl spawnv spawnve spawnlp spawnvp posix_spawn fork execl execle execlp "
    "execv execve execvp eval exec compile open write_text write_bytes read_text read_bytes "
    "unlink rmdir rmtree remove removedirs mkdir makedirs touch symlink_to hardlink_to "
    "link_to chmod chown lchmod kill load loads load_compatibility read_array read_pickle "
    "import_module find_class"
)
# Objects whose every method is refused: built from these, any attribute reaches files.
_INSTANCE_REFUSED = ("pathlib.", "io.", "_io.", "zipfile.", "tarfile.", "tempfile.", "codecs.")

UNRESOLVED = "<unresolved>"
TOO_LONG = "<name too long>"
MADE = "(...)"  # separates a type's name from a method looked up on its instance
OBJECT = "<object>"  # an object the scan cannot name


def _is_dunder(segment: str) -> bool:
    return len(segment) > 4 and segment.startswith("__") and segment.endswith("__")


def _module_rule(name: str) -> str | None:
    if name in DANGEROUS:
        return "is refused"
    if name == "dill" or name.startswith("dill."):
        return None if name in DILL_ALLOWED else "is a dill function that loads or runs code"
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        if ".".join(parts[:i]) + ".*" in DANGEROUS:
            return f"is in module {'.'.join(parts[:i])}, which is refused"
    return None


def _segment_rule(name: str, segments: list[str]) -> str | None:
    exempt = name.startswith(_ALIAS_EXEMPT)
    for segment in segments:
        if _is_dunder(segment) and segment not in _DUNDERS_OK:
            return f"goes through {segment}, which reaches code, globals or other modules"
        if not exempt and segment.lstrip("_").lower() in _ALIAS_MODULES:
            return f"goes through {segment}, an alias of a module that is refused"
    return None


def refusal(name: str) -> str | None:
    """Why the scan refuses the dotted `name`, or None when it is allowed."""
    if name in (UNRESOLVED, TOO_LONG):
        return "is computed when the file loads, so the scan cannot check it"
    if name == "__main__.__dict__":
        return None  # dill's find_class special case: the loading process's main globals
    base, made, method = name.partition(MADE)
    if made:  # a method of an object the pickle built: base(...).method
        if base.startswith(_INSTANCE_REFUSED):
            return f"calls a method of a {base} object, which reads or writes files"
        return _method_rule(method.lstrip("."))
    if base.startswith(OBJECT + "."):
        return _method_rule(base[len(OBJECT) + 1 :])
    if name in DILL_ALLOWED:
        return None
    module = "operator." + base[len("_operator.") :] if base.startswith("_operator.") else base
    return _module_rule(module) or _segment_rule(module, module.split(".")[1:])


def _method_rule(path: str) -> str | None:
    for segment in path.split("."):
        if segment in DANGEROUS_METHODS:
            return f"looks up {segment}, which can run commands, touch files or load code"
    return _segment_rule("", path.split("."))


def is_dangerous(name: str) -> bool:
    """True if the dotted global `name` is refused (see refusal)."""
    return refusal(name) is not None
