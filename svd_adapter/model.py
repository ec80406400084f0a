"""The SVD residual tuner: injects ``svd_adapter.layer.Linear`` into a model, PEFT-style."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
from peft.tuners.tuners_utils import BaseTuner, check_target_module_exists
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
from torch import nn

from . import fingerprint
from .config import DEFAULT_TARGET_MODULES, SVDResidualConfig
from .layer import BASE_ADAPTER_NAME, Linear, SVDResidualLayer

ROW_INDEX_ATTRIBUTE = "peft_row_sample_index"


class BaseFingerprintMismatchError(ValueError):
    """The adapter was made on different base weights than the model it is being loaded onto."""


class SVDResidualModel(BaseTuner):
    """Tuner model for :class:`SVDResidualConfig`; use it through ``peft.get_peft_model`` / ``PeftModel``.

    Besides the stock tuner API it offers :meth:`svd_regularization_loss` (also reachable on the ``PeftModel``) and
    mixed-adapter batches through ``model(..., adapter_names=[...])``. A wrapped model whose inner layers see more
    rows than the outer batch sets ``peft_row_sample_index`` (a LongTensor: the outer sample of each inner row) on
    itself while it runs them, so each row gets its sample's adapter.
    """

    prefix: str = "svd_"
    tuner_layer_cls = SVDResidualLayer
    target_module_mapping = DEFAULT_TARGET_MODULES

    # ------------------------------------------------------------------ injection
    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        """Check the base fingerprint before touching the model; decompose fresh adapters once injected."""
        config: SVDResidualConfig = self.peft_config[adapter_name]
        fresh = config.base_fingerprint is None
        if not fresh and config.check_base_fingerprint:
            self._verify_fingerprint(model, config)
        super().inject_adapter(model, adapter_name, **kwargs)
        layers = dict(self._layers_with(adapter_name))
        if fresh:
            for layer in layers.values():
                if not layer.svd_U[adapter_name].is_meta:  # meta factors (low_cpu_mem_usage) await loaded tensors
                    layer.initialise_from_svd(adapter_name)
            config.base_fingerprint = {
                name: fingerprint.record(layer.get_base_layer().weight.shape, self._sample(layer))
                for name, layer in layers.items()
            }

    def _create_and_replace(
        self,
        peft_config: SVDResidualConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: Optional[str] = None,
    ) -> None:
        if parameter_name is not None:
            raise ValueError("SVD residual adapters target nn.Linear modules, not bare parameters.")
        base = target.get_base_layer() if isinstance(target, SVDResidualLayer) else target
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{current_key}: SVD residual adapters support nn.Linear only, got {type(base).__name__}.")
        _, k = peft_config.ranks_for(current_key, base.out_features, base.in_features)
        if isinstance(target, SVDResidualLayer):
            target.update_layer(adapter_name, k)
            return
        new_module = Linear(target, adapter_name, k)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _layers_with(self, adapter_name: str) -> Iterator[tuple[str, SVDResidualLayer]]:
        for name, module in self.model.named_modules():
            if isinstance(module, SVDResidualLayer) and adapter_name in module.svd_U:
                yield name, module

    @staticmethod
    def _sample(layer: SVDResidualLayer) -> torch.Tensor:
        rows, cols = fingerprint.sample_positions(tuple(layer.get_base_layer().weight.shape))
        return layer.unmerged_weight_sample(rows, cols)

    def _verify_fingerprint(self, model: nn.Module, config: SVDResidualConfig) -> None:
        """Raise :class:`BaseFingerprintMismatchError` naming each module that differs from the recorded base."""
        problems = []
        modules = dict(model.named_modules())
        targeted = {
            name
            for name, module in modules.items()
            if config.target_modules is not None
            and isinstance(module, (nn.Linear, SVDResidualLayer))
            and not name.endswith(".base_layer")
            and check_target_module_exists(config, name)
        }
        for name in sorted(targeted - set(config.base_fingerprint)):
            problems.append(f"{name}: targeted in this model but absent from the adapter's base")
        for name, recorded in config.base_fingerprint.items():
            module = modules.get(name)
            if module is None:
                problems.append(f"{name}: no such module in this model")
                continue
            weight = module.weight
            if isinstance(module, SVDResidualLayer):
                values = self._sample(module)
            elif list(weight.shape) == list(recorded["shape"]):
                rows, cols = fingerprint.sample_positions(tuple(weight.shape))
                values = weight.detach()[rows.to(weight.device), cols.to(weight.device)].double().cpu()
            else:
                values = torch.empty(0)
            problem = fingerprint.mismatch(name, recorded, tuple(weight.shape), values, weight.dtype)
            if problem:
                problems.append(problem)
        if problems:
            shown = "\n  ".join(problems[:5]) + (f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise BaseFingerprintMismatchError(
                f"This SVD residual adapter was made on different base weights ({len(problems)} module(s) differ):\n"
                f"  {shown}\nLoad it onto the base it was trained on. To load anyway (experts only), load the config "
                "with SVDResidualConfig.from_pretrained(path), set check_base_fingerprint=False and pass it as "
                "PeftModel.from_pretrained(base, path, config=config)."
            )

    # ------------------------------------------------------------------ state dict
    @classmethod
    def _get_adapter_state_dict(cls, model: nn.Module, config, adapter_name: str, state_dict, unwanted_adapter_names):
        """Decompose any adapter never initialised before saving it (the state dict shares storage, filled in place)."""
        for module in model.modules():
            if isinstance(module, SVDResidualLayer) and adapter_name in module.svd_U:
                module.ensure_initialised(adapter_name)
        return super()._get_adapter_state_dict(
            model=model,
            config=config,
            adapter_name=adapter_name,
            state_dict=state_dict,
            unwanted_adapter_names=unwanted_adapter_names,
        )

    # ------------------------------------------------------------------ regularisers
    def svd_regularization_loss(self, adapter_name: Optional[str] = None) -> torch.Tensor:
        """Weighted Effort regularisers of one adapter (default: the active one), summed over its layers.

        ``orthogonality_weight * sum ||[U_p|U_res]^T[U_p|U_res] - I||^2 (+ same for V)
        + norm_weight * sum (||W_adapted||_F - ||W||_F)^2``, with the weights from the adapter's config.
        """
        adapter_name = self._single_adapter(adapter_name)
        config: SVDResidualConfig = self.peft_config[adapter_name]
        terms = self.svd_regularization_terms(adapter_name)
        return config.orthogonality_weight * terms["orthogonality"] + config.norm_weight * terms["norm"]

    def svd_regularization_terms(self, adapter_name: Optional[str] = None) -> dict[str, torch.Tensor]:
        """The unweighted regularisers ``{"orthogonality": ..., "norm": ...}`` of one adapter."""
        adapter_name = self._single_adapter(adapter_name)
        layers = [layer for _, layer in self._layers_with(adapter_name)]
        if not layers:
            raise ValueError(f"No layer holds adapter {adapter_name!r}.")
        return {
            "orthogonality": torch.stack([layer.orthogonality_loss(adapter_name) for layer in layers]).sum(),
            "norm": torch.stack([layer.norm_loss(adapter_name) for layer in layers]).sum(),
        }

    def _single_adapter(self, adapter_name: Optional[str]) -> str:
        if adapter_name is not None:
            if adapter_name not in self.peft_config:
                raise ValueError(f"Unknown adapter {adapter_name!r}; known: {sorted(self.peft_config)}.")
            return adapter_name
        if len(self.active_adapters) != 1:
            raise ValueError(f"Several adapters are active ({self.active_adapters}); pass adapter_name.")
        return self.active_adapters[0]

    # ------------------------------------------------------------------ mixed-adapter batches
    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any):
        """Route each sample of a batch through its own adapter when ``adapter_names`` is passed to the forward."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
        layers = [m for m in self.model.modules() if isinstance(m, SVDResidualLayer)]
        known = set().union(*(layer.svd_U.keys() for layer in layers))
        unknown = set(adapter_names) - known - {BASE_ADAPTER_NAME}
        if unknown:
            raise ValueError(f"Unknown adapter(s) in adapter_names: {sorted(unknown)}; known: {sorted(known)}.")
        if any(layer.merged for layer in layers):
            raise ValueError("Cannot pass `adapter_names` while adapters are merged; call unmerge_adapter() first.")

        names = list(adapter_names)
        root = self.model

        def pre_forward(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            x = args[0] if args else kwargs["x"]
            kwargs["adapter_names"] = _names_per_row(names, x.shape[0], getattr(root, ROW_INDEX_ATTRIBUTE, None))
            return args, kwargs

        def wrapper_pre_forward(module: AuxiliaryTrainingWrapper, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            # Fully trained copies (``modules_to_save``): an adapter without its own copy uses the original module.
            args, kwargs = pre_forward(module, args, kwargs)
            if isinstance(module, ModulesToSaveWrapper):
                own = module.modules_to_save
                kwargs["adapter_names"] = [n if n in own else BASE_ADAPTER_NAME for n in kwargs["adapter_names"]]
            return args, kwargs

        wrappers = [m for m in self.model.modules() if isinstance(m, AuxiliaryTrainingWrapper)]
        handles = [layer.register_forward_pre_hook(pre_forward, with_kwargs=True) for layer in layers]
        handles += [w.register_forward_pre_hook(wrapper_pre_forward, with_kwargs=True) for w in wrappers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _names_per_row(names: list[str], rows: int, row_index: Optional[torch.Tensor]) -> list[str]:
    """Adapter name of each row of a layer input: directly, or through the root model's row -> sample index."""
    if rows == len(names):
        return names
    if row_index is None:
        raise ValueError(
            f"A tuner layer sees {rows} rows but adapter_names has {len(names)} entries. A model whose inner layers "
            f"run several rows per sample must set `{ROW_INDEX_ATTRIBUTE}` (the sample index of each inner row) on "
            "itself while they run."
        )
    if row_index.ndim != 1 or row_index.shape[0] != rows:
        raise ValueError(
            f"`{ROW_INDEX_ATTRIBUTE}` has shape {tuple(row_index.shape)} but the layer input has {rows} rows."
        )
    indices = row_index.tolist()
    if indices and not 0 <= min(indices) <= max(indices) < len(names):
        raise ValueError(f"`{ROW_INDEX_ATTRIBUTE}` points outside the {len(names)} samples of adapter_names.")
    return [names[i] for i in indices]
