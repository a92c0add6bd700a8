"""Static checks of the Slicer module against Slicer's real API, without a Slicer binary.

``../shared/slicer-api/slicer_api.json`` (extracted from the Slicer sources) lists every public function and class
method of ``slicer.util``, ``slicer.packaging``, ``sitkUtils``, ``slicer.ScriptedLoadableModule`` and
``slicer.parameterNodeWrapper`` with its parameters. These helpers walk a module's syntax tree and report each call
or import that Slicer would reject at run time. ``slicer.util`` calls are also checked against the source of the
``slicer/util.py`` that the installed slicer-core wheel ships (:func:`installed_slicer_util`).

Example:
    >>> api = load_api(API_PATH)                                              # doctest: +SKIP
    >>> problems = check_source(Path("CollaGANImpute/CollaGANImpute.py").read_text(), api)   # doctest: +SKIP
"""

from __future__ import annotations

import ast
import json
import re
import unittest
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

REPO = Path(__file__).resolve().parents[2]
API_PATH = REPO.parent / "shared" / "slicer-api" / "slicer_api.json"
MODULE_DIR = REPO / "CollaGANImpute"
MODULE_FILE = MODULE_DIR / "CollaGANImpute.py"
SCENE_DIR = MODULE_DIR / "CollaGANImputeLib" / "scene"
SCENE_LOGIC_FILE = SCENE_DIR / "logic.py"
#: The Qt-free Slicer side: needs MRML (Slicer or slicer-core) ...
SCENE_FILES = [SCENE_LOGIC_FILE, SCENE_DIR / "nodes.py", SCENE_DIR / "parameters.py", SCENE_DIR / "model_cache.py",
               SCENE_DIR / "inputs.py", SCENE_DIR / "imputation.py", SCENE_DIR / "display.py"]
#: ... and the parts that need only the core.
SLICER_FREE_SCENE_FILES = [SCENE_DIR / "names.py", SCENE_DIR / "job.py", SCENE_DIR / "comparison.py"]
#: ... and what the module's Logic and self-test inherit that needs the Slicer application (views, packages).
APP_FILES = [SCENE_DIR / "application.py", SCENE_DIR / "selftest.py"]
UI_FILE = MODULE_DIR / "Resources" / "UI" / "CollaGANImpute.ui"
CHECKED_MODULES = ("slicer.util", "slicer.packaging", "sitkUtils")
SLM_MODULE = "slicer.ScriptedLoadableModule"
MIXIN = ("slicer.util", "VTKObservationMixin")


@dataclass(frozen=True)
class Signature:
    params: tuple[str, ...]
    defaults: int
    varargs: bool
    varkw: bool

    @classmethod
    def from_json(cls, data: dict) -> Signature:
        return cls(tuple(data["params"]) + tuple(data.get("kwonly", [])), data["defaults"], data["varargs"],
                   data["varkw"])

    def problems(self, name: str, call: ast.Call, bound: bool) -> list[str]:
        """Keywords it does not take, or more positional arguments than it has."""
        params = self.params[1:] if bound and self.params[:1] == ("self",) else self.params
        found = []
        if not self.varkw:
            for keyword in call.keywords:
                if keyword.arg is not None and keyword.arg not in params:
                    found.append(f"line {call.lineno}: {name}() takes no keyword '{keyword.arg}' (takes {params})")
        positional = [a for a in call.args if not isinstance(a, ast.Starred)]
        if not self.varargs and len(positional) > len(params):
            found.append(f"line {call.lineno}: {name}() takes at most {len(params)} positional arguments, "
                         f"{len(positional)} given")
        return found


def load_api(path: Path = API_PATH) -> dict:
    return json.loads(path.read_text())["modules"]


def _functions(api: dict, module: str) -> dict[str, Signature]:
    return {name: Signature.from_json(sig) for name, sig in api.get(module, {}).get("functions", {}).items()}


def _classes(api: dict, module: str) -> dict[str, dict[str, Signature]]:
    return {name: {m: Signature.from_json(sig) for m, sig in cls["methods"].items()}
            for name, cls in api.get(module, {}).get("classes", {}).items()}


def _dotted(node: ast.AST) -> Optional[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _exported(api: dict, module: str) -> set[str]:
    """Names importable from ``module`` (its functions and classes; a package also re-exports submodules')."""
    names: set[str] = set()
    for name, content in api.items():
        if name == module or name.startswith(module + "."):
            names |= set(content.get("functions", {})) | set(content.get("classes", {}))
            names |= {n for n in content.get("names", []) if n != "*"}
    return names


def check_imports(tree: ast.AST, api: dict) -> list[str]:
    """``from slicer.<checked module> import X``: X must exist there."""
    problems = []
    checked = set(CHECKED_MODULES) | {SLM_MODULE, "slicer.parameterNodeWrapper", "slicer.i18n"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in checked:
            exported = _exported(api, node.module)
            for alias in node.names:
                if alias.name not in exported:
                    problems.append(f"line {node.lineno}: {node.module} has no '{alias.name}'")
    return problems


def module_calls(tree: ast.AST, modules: Iterable[str] = CHECKED_MODULES,
                 extra_aliases: Optional[dict[str, str]] = None) -> Iterable[tuple[ast.Call, str, str]]:
    """(call, module, member) for each call ``module.member(...)`` in ``tree``, names imported from the module
    (``from slicer.util import getNode``) included; calls on returned objects (``f().g()``) are not members."""
    modules = tuple(modules)
    aliases = dict(extra_aliases or {})
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in modules:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name is None:
            continue
        head, _, rest = name.partition(".")
        if head in aliases:
            name = aliases[head] + (f".{rest}" if rest else "")
        for module in modules:
            member = name[len(module) + 1:] if name.startswith(module + ".") else ""
            if member and "." not in member:
                yield node, module, member


def check_module_calls(tree: ast.AST, api: dict, extra_aliases: Optional[dict[str, str]] = None) -> list[str]:
    """Calls ``slicer.util.f(...)``, ``slicer.packaging.f(...)``, ``sitkUtils.f(...)`` (and names imported from
    them, e.g. ``from slicer.util import getNode``) against the API."""
    functions = {module: _functions(api, module) for module in CHECKED_MODULES}
    classes = {module: _classes(api, module) for module in CHECKED_MODULES}
    problems = []
    for node, module, member in module_calls(tree, CHECKED_MODULES, extra_aliases):
        name = f"{module}.{member}"
        if member in functions[module]:
            problems += functions[module][member].problems(name, node, bound=False)
        elif member in classes[module]:
            init = classes[module][member].get("__init__")
            if init is not None:
                problems += init.problems(name, node, bound=True)
        else:
            problems.append(f"line {node.lineno}: {module} has no function '{member}'")
    return problems


# --- the installed slicer-core's own source ------------------------------------------------------------------

def installed_slicer_util() -> Optional[Path]:
    """``slicer/util.py`` of the installed slicer-core wheel (found through its file list: nothing is imported),
    or None when slicer-core is not installed."""
    from importlib import metadata

    try:
        files = metadata.files("slicer-core") or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.as_posix() == "slicer/util.py":
            return Path(file.locate())
    return None


def _signature_of(function: ast.FunctionDef) -> Signature:
    args = function.args
    return Signature(tuple(a.arg for a in args.posonlyargs + args.args + args.kwonlyargs), len(args.defaults),
                     args.vararg is not None, args.kwarg is not None)


def signatures_from_source(source: str) -> dict[str, tuple[Signature, bool]]:
    """Top-level functions of a module's source -> (signature, False); classes -> (their __init__, True)."""
    found: dict[str, tuple[Signature, bool]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found[node.name] = (_signature_of(node), False)
        elif isinstance(node, ast.ClassDef):
            init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
            found[node.name] = (_signature_of(init) if init else Signature(("self",), 0, False, False), True)
    return found


def called_functions(tree: ast.AST, module: str) -> set[str]:
    """Names of ``module``'s functions (or classes) that ``tree`` calls."""
    return {member for _node, _module, member in module_calls(tree, [module])}


def check_calls_against(tree: ast.AST, module: str, signatures: dict[str, tuple[Signature, bool]]) -> list[str]:
    """Each call of ``module.f(...)`` in ``tree``: f exists in ``signatures`` and takes the arguments given."""
    problems = []
    for node, _module, member in module_calls(tree, [module]):
        if member not in signatures:
            problems.append(f"line {node.lineno}: the installed {module} has no '{member}'")
            continue
        signature, bound = signatures[member]
        problems += signature.problems(f"{module}.{member}", node, bound=bound)
    return problems


def _class_methods(cls: ast.ClassDef) -> set[str]:
    return {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def check_scripted_module_classes(tree: ast.AST, api: dict) -> list[str]:
    """In classes deriving from ScriptedLoadableModule*: every ``Base.m(self, ...)``, ``super().m(...)`` and
    ``self.m(...)`` (m not defined in the class) must be a method the bases really have, called correctly."""
    slm = _classes(api, SLM_MODULE)
    mixin = _classes(api, MIXIN[0]).get(MIXIN[1], {})
    testcase = {name for name in dir(unittest.TestCase) if not name.startswith("_")}
    problems = []
    for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        bases = [_dotted(b) for b in cls.bases]
        slm_bases = [b for b in bases if b in slm]
        if not slm_bases:
            continue
        available: dict[str, Signature] = {}
        for base in slm_bases:
            available.update(slm[base])
        if "VTKObservationMixin" in bases:
            available.update(mixin)
        own = _class_methods(cls)
        is_test = "ScriptedLoadableModuleTest" in slm_bases
        for node in ast.walk(cls):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            method, target = node.func.attr, node.func.value
            if isinstance(target, ast.Name) and target.id in slm:  # Base.method(self, ...)
                signature = slm[target.id].get(method)
                if signature is None:
                    problems.append(f"line {node.lineno}: {target.id} has no method '{method}'")
                else:
                    call = ast.Call(func=node.func, args=node.args[1:], keywords=node.keywords)
                    call.lineno = node.lineno
                    problems += signature.problems(f"{target.id}.{method}", call, bound=True)
            elif (isinstance(target, ast.Call) and _dotted(target.func) == "super") or (
                    isinstance(target, ast.Name) and target.id == "self" and method not in own):
                if method in available:
                    problems += available[method].problems(f"{cls.name}.{method}", node, bound=True)
                elif not (is_test and method in testcase):
                    problems.append(f"line {node.lineno}: {cls.name}.{method}() is neither defined in the class "
                                    f"nor a method of {', '.join(slm_bases)}")
    return problems


def check_source(source: str, api: dict) -> list[str]:
    tree = ast.parse(source)
    return check_imports(tree, api) + check_module_calls(tree, api) + check_scripted_module_classes(tree, api)


# --- .ui file ------------------------------------------------------------------------------------------------

def ui_widgets(path: Path = UI_FILE) -> dict[str, str]:
    """Widget name -> class in a Qt Designer file."""
    root = ET.parse(path).getroot()
    names = [(w.get("name"), w.get("class")) for w in root.iter("widget")]
    duplicates = {n for n, _ in names if [m for m, _ in names].count(n) > 1}
    if duplicates:
        raise AssertionError(f"{path.name}: duplicate widget names {sorted(duplicates)}")
    return dict(names)


def ui_parameter_names(path: Path = UI_FILE) -> dict[str, str]:
    """Widget name -> its SlicerParameterName dynamic property."""
    found = {}
    for widget in ET.parse(path).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                found[widget.get("name")] = prop.findtext("string")
    return found


def ui_attributes_used(tree: ast.AST) -> dict[str, int]:
    """Every ``self.ui.X`` / ``widget.ui.X`` the Python reads: X -> first line."""
    used: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui":
            used.setdefault(node.attr, node.lineno)
    return used


def class_methods(name: str, files: Iterable[Path] = (MODULE_FILE, *SCENE_FILES, *APP_FILES)
                  ) -> dict[str, ast.FunctionDef]:
    """The methods of class ``name`` with those it inherits from classes defined in ``files`` (Slicer's own bases
    are not followed): method name -> its definition, the nearest one winning as in Python's method order."""
    classes: dict[str, ast.ClassDef] = {}
    for path in files:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, node)
    found: dict[str, ast.FunctionDef] = {}

    def visit(cls: ast.ClassDef) -> None:
        for item in cls.body:
            if isinstance(item, ast.FunctionDef):
                found.setdefault(item.name, item)
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id in classes:
                visit(classes[base.id])

    visit(classes[name])
    return found


def parameter_fields(tree: ast.AST) -> dict[str, str]:
    """Fields of the @parameterNodeWrapper class: name -> annotation source."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(_dotted(d) == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id: ast.unparse(s.annotation) for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    return {}


def parameter_defaults(tree: ast.AST) -> dict[str, object]:
    """Defaults of the @parameterNodeWrapper class's fields that have one: name -> value (a literal)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(_dotted(d) == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id: ast.literal_eval(s.value) for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.value is not None}
    return {}


#: Annotation of a scene parameter field's kind in the panel's parameterNodeWrapper.
FIELD_TYPES = {"text": "str", "path": "pathlib.Path", "int": "int", "volume": "vtkMRMLScalarVolumeNode"}


def wrapper_annotation(field) -> str:
    """The annotation a ``scene.parameters.ParameterField`` has in the panel's wrapper, as ``ast.unparse`` writes it."""
    base = FIELD_TYPES[field.kind]
    if field.choices:
        return f"Annotated[{base}, Choice({list(field.choices)!r})]"
    if field.within:
        return f"Annotated[{base}, WithinRange({field.within[0]}, {field.within[1]})]"
    return base


def parameter_mismatches(tree: ast.AST, fields) -> list[str]:
    """Where the panel's @parameterNodeWrapper class and the scene's declared fields disagree: names and order,
    annotations (type, choices, range) and defaults."""
    declared, defaults = parameter_fields(tree), parameter_defaults(tree)
    problems = []
    if list(declared) != [f.name for f in fields]:
        problems.append(f"fields {list(declared)} in the wrapper, {[f.name for f in fields]} in the scene")
    for field in fields:
        if field.name in declared and declared[field.name] != wrapper_annotation(field):
            problems.append(f"{field.name}: '{declared[field.name]}' in the wrapper, '{wrapper_annotation(field)}' "
                            "from the scene")
        if field.name in declared and defaults.get(field.name) != field.default:
            problems.append(f"{field.name}: default {defaults.get(field.name)!r} in the wrapper, {field.default!r} "
                            "in the scene")
    return problems


def top_level_imports(path: Path) -> set[str]:
    """Modules a file imports when it is loaded (not inside functions or ``if TYPE_CHECKING:``), relative imports
    resolved to full names within the ``CollaGANImputeLib`` package."""
    package = ".".join(path.relative_to(MODULE_DIR).with_suffix("").parts[:-1])
    found = set()
    for node in ast.parse(path.read_text()).body:
        blocks = [node]
        if isinstance(node, ast.Try):
            blocks = node.body + [s for h in node.handlers for s in h.body]
        for statement in blocks:
            if isinstance(statement, ast.Import):
                found |= {a.name for a in statement.names}
            elif isinstance(statement, ast.ImportFrom):
                if statement.level:
                    base = package.split(".")[:len(package.split(".")) - statement.level + 1]
                    found.add(".".join(base + ([statement.module] if statement.module else [])))
                else:
                    found.add(statement.module or "")
    return found


def loaded_at_import(module: str) -> set[str]:
    """Every module importing ``module`` (a ``CollaGANImputeLib`` module) loads, following the package's own."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = MODULE_DIR.joinpath(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if name.startswith("CollaGANImputeLib") and path.is_file():
            parts = name.split(".")
            todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages load first
            todo += sorted(top_level_imports(path))
    return seen


#: Widget class -> predicate on the field's annotation, after Slicer's GUI connectors (guiConnectors.py).
CONNECTABLE = {
    "QComboBox": lambda a: "Choice(" in a or re.search(r"\bEnum\b", a) is not None,
    "QSpinBox": lambda a: re.search(r"\bint\b", a) is not None,
    "QSlider": lambda a: re.search(r"\bint\b", a) is not None and "WithinRange" in a,
    "QDoubleSpinBox": lambda a: re.search(r"\bfloat\b", a) is not None,
    "ctkSliderWidget": lambda a: re.search(r"\bfloat\b", a) is not None and "WithinRange" in a,
    "QCheckBox": lambda a: a == "bool",
    "QLineEdit": lambda a: a == "str",
    "ctkPathLineEdit": lambda a: "Path" in a,
    "ctkDirectoryButton": lambda a: "Path" in a,
    "qMRMLNodeComboBox": lambda a: "vtkMRML" in a and "Node" in a,
}


# --- CMake ---------------------------------------------------------------------------------------------------

def cmake_list(text: str, variable: str, substitutions: Optional[dict[str, str]] = None) -> list[str]:
    """Items of ``set(VARIABLE item item ...)`` (comments dropped, ${VAR} substituted)."""
    match = re.search(rf"set\(\s*{re.escape(variable)}\s+(.*?)\)", text, re.DOTALL)
    if match is None:
        raise AssertionError(f"set({variable} ...) not found")
    body = "\n".join(line.split("#", 1)[0] for line in match.group(1).splitlines())
    items = body.split()
    for key, value in (substitutions or {}).items():
        items = [item.replace("${" + key + "}", value) for item in items]
    return items


def cmake_value(text: str, variable: str) -> str:
    match = re.search(rf'set\(\s*{re.escape(variable)}\s+"([^"]*)"\s*\)', text)
    if match is None:
        raise AssertionError(f'set({variable} "...") not found')
    return match.group(1)


def files_under(folder: Path, exclude_dirs: Iterable[str] = ("__pycache__",)) -> set[str]:
    excluded = set(exclude_dirs)

    def ignored(parts: tuple[str, ...]) -> bool:  # build/packaging leftovers and hidden files are no sources
        return bool(excluded & set(parts)) or any(p.endswith(".egg-info") or p.startswith(".") for p in parts)

    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and not ignored(p.relative_to(folder).parts) and p.suffix != ".pyc"}


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (refuses anything that is not a PNG)."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise AssertionError(f"{path} is not a PNG file")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# --- Markdown ------------------------------------------------------------------------------------------------

def python_blocks(markdown: str) -> list[tuple[bool, str]]:
    """(runnable, code) of each ```python block; runnable ones follow a ``<!-- runnable -->`` line."""
    blocks = []
    for match in re.finditer(r"(<!-- runnable -->\s*\n)?```python\n(.*?)```", markdown, re.DOTALL):
        blocks.append((match.group(1) is not None, match.group(2)))
    return blocks
