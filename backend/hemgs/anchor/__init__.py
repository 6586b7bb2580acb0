"""The anchor scene model (Scaffold-GS as HAC uses it): voxel anchors, neural Gaussians, warm start, bake.

Submodules: `voxelize` (pure numpy), `model` (torch), `render`, `warm_start`, `bake`. Import them directly;
this package imports nothing heavy itself, so `hemgs.anchor.voxelize` works without torch.
"""
