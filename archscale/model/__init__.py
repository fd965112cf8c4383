"""Stage: the model. The one LLaMA-style ``nn.Module`` that archscale trains and benchmarks.

In: an :class:`~archscale.shapes.architecture.Architecture`. Out: :class:`~.transformer.Transformer`
(training and the torch bench backend), its frozen CPU decode path (:mod:`.frozen_linear`) and the bytes a
run needs (:mod:`.memory`). Nothing is imported here, so that the memory arithmetic loads without torch.
"""
