"""The Slicer side of CollaGANImpute, in one place: everything the Slicer module does, usable without Qt.

- :mod:`.names`: which scene volume is which contrast (from node names), result names and synthetic labels;
- :mod:`.job`: the imputation in short steps with progress and cancel (:class:`~.job.ChunkedImputation`);
- :mod:`.comparison`: scores, error map, per-slice SSIM and CSV of the Compare section;
- :mod:`.nodes`: volume node <-> SimpleITK image (voxels, IJK-to-RAS <-> LPS geometry, label maps);
- :mod:`.logic`: :class:`~.logic.SceneLogic`, what the module does to an MRML scene, Qt-free, one job per
  module: :mod:`.parameters` (the parameter node and its fields, declared once), :mod:`.model_cache`,
  :mod:`.inputs`, :mod:`.imputation` and :mod:`.display` (colour tables, the Compare section's nodes).

``names``, ``job`` and ``comparison`` need only the core; ``nodes`` and ``logic`` need MRML: 3D Slicer itself
or the ``slicer-core`` wheel (``pip install slicer-core``), not Qt. ``CollaGANImpute.py``'s Logic inherits
:class:`~.logic.SceneLogic`; any other MRML front end drives it.

Example (Python with slicer-core, no Slicer application):
    >>> import slicer                                                                    # doctest: +SKIP
    >>> from CollaGANImputeLib.scene.logic import SceneLogic                             # doctest: +SKIP
    >>> logic = SceneLogic(slicer.vtkMRMLScene())                                        # doctest: +SKIP
    >>> nodes = logic.loadSampleCase()                                                   # doctest: +SKIP
    >>> node = logic.imputeNodes({"t1n": nodes["t1n"], "t2f": nodes["t2f"]}, target="t1c")  # doctest: +SKIP
"""
