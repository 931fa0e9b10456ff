"""Orbax checkpoints of a training workdir, and params-only checkpoints.

Workdir layout (one directory per stage, step numbers global over the run):

    WORKDIR/config.json                      the resolved stages (name + full config), JSON
    WORKDIR/checkpoints/<stage>/<step>/
        params/                              the params pytree (orbax, sharded arrays)
        train/                               {step, opt_state, rng}
        data/row_<r>.json                    the data iterator state of global batch row r
                                             (JSON, no pickle; written by the row's lowest
                                             process, read by whichever processes hold it next)
    WORKDIR/metrics/, WORKDIR/tb/            per-step metrics (JSONL chunks); TensorBoard events

WORKDIR may be a local path or a gs:// URL (glm_jax.storage); nothing here assumes a local disk.
The data state is per global row, not per process, so a checkpoint resumes on any process count.

A params-only checkpoint (`save_params`, what the HF importer writes and `train.init_from`
reads) is `PATH/params/` plus `PATH/config.json`.

Stacked leaves (everything under `layers`, shape [L, ...]) are stored one chunk per layer, so a
converter reads or writes a single layer without touching the others (`param_reader`,
`save_params` from a `LeafReader`).

Saves are asynchronous (`checkpoint.async_save`): the arrays are copied off the devices before
`save` returns, then written in the background into a temporary directory that orbax renames
only when complete, so a crash mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath

from glm_jax import config as config_lib, sharding, storage
from glm_jax.config import CheckpointConfig, Config
from glm_jax.model import spec
from glm_jax.train.state import TrainState

CONFIG_FILE = "config.json"

Path = tuple[str, ...]
LeafReader = Callable[[Path, int | None], np.ndarray]
"""read(path, layer) -> host array. `path` names a leaf of the params tree, e.g.
("layers", "mlp", "wi", "kernel"); `layer` None asks for the whole leaf, an int for that layer's
slice of a stacked leaf ([D, 2, F] of [L, D, 2, F]). Converters stream through these."""


def _stacked(path: Path) -> bool:
    return spec.is_stacked(path)  # a leading `layers` logical axis in the spec tree: one slice per layer


def _keys(keypath) -> Path:
    return tuple(k.key for k in keypath)


def _save_args(params: dict) -> dict:
    """One storage chunk per layer for stacked leaves (per device shard otherwise, orbax's default)."""
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: ocp.SaveArgs(shard_axes=(0,) if _stacked(_keys(kp)) else ()), params)


# ---------------------------------------------------------------------------------------------
# The data iterator's state: one JSON file per process
# ---------------------------------------------------------------------------------------------

class IteratorStateHandler(ocp.CheckpointHandler):
    """Writes the data iterator's per-row states as JSON, one file per global batch row.

    Save: `IteratorStateSave(state={row: state}, owned=[rows])` writes `row_<r>.json` for the
    owned rows only (each row has one writer whatever the number of processes that read it).
    Restore: every row file of the checkpoint, as {row (str): state}; each process's iterator
    takes its own rows, so the process count may differ from the run that saved."""

    def save(self, directory: epath.Path, args: "IteratorStateSave") -> None:
        for row in args.owned:
            state = args.state[str(row)]
            payload = {"bytes": state.decode()} if isinstance(state, bytes) else {"state": state}
            (directory / f"row_{row}.json").write_text(json.dumps(payload))

    def restore(self, directory: epath.Path, args: "IteratorStateRestore" = None) -> Any:
        states = {}
        for f in directory.iterdir():
            if f.name.startswith("row_") and f.name.endswith(".json"):
                payload = json.loads(f.read_text())
                states[f.name[len("row_"):-len(".json")]] = (payload["bytes"].encode() if "bytes" in payload
                                                             else payload["state"])
        if not states:
            found = sorted(f.name for f in directory.iterdir())
            raise FileNotFoundError(f"{directory} holds no per-row data state (found {found}); it was written by "
                                    f"an older glm-jax whose data state was per process: start a new workdir, or "
                                    f"begin from its params with --config.train.init_from")
        return states


@ocp.args.register_with_handler(IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class IteratorStateSave(ocp.args.CheckpointArgs):
    state: dict  # {str(row): JSON-able state} of this process's rows
    owned: list  # the rows this process writes (sharding.host_rows)


@ocp.args.register_with_handler(IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class IteratorStateRestore(ocp.args.CheckpointArgs):
    pass


# ---------------------------------------------------------------------------------------------
# Train-state checkpoints of one stage
# ---------------------------------------------------------------------------------------------

def stage_dir(workdir: str, stage: str) -> str:
    return storage.join(storage.resolve(workdir), "checkpoints", stage)


class StageCheckpoints:
    """A CheckpointManager over one stage's directory: params, {step, opt_state, rng}, data."""

    def __init__(self, directory: str, ckpt_cfg: CheckpointConfig = CheckpointConfig(), read_only: bool = False):
        self.directory = directory
        options = ocp.CheckpointManagerOptions(max_to_keep=ckpt_cfg.keep, create=not read_only,
                                               enable_async_checkpointing=ckpt_cfg.async_save,
                                               read_only=read_only, cleanup_tmp_directories=not read_only)
        self.manager = ocp.CheckpointManager(
            directory, options=options,
            item_handlers={"params": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
                           "data": IteratorStateHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, state: TrainState, data_state: dict, owned_rows: list[int]) -> None:
        """Saves at `state.step`; returns once the arrays are off the devices (the write goes on).
        `data_state` is the iterator's {row: state}; this process writes `owned_rows` of it."""
        step = int(jax.device_get(state.step))
        self.manager.save(step, force=True, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params, save_args=_save_args(state.params)),
            train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state, "rng": state.rng}),
            data=IteratorStateSave(data_state, list(owned_rows))))
        if jax.process_index() == 0:
            print(f"checkpoint step {step}: saving to {self.directory}"
                  f"{' in the background' if self.manager._options.enable_async_checkpointing else ''}", flush=True)

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, Any]:
        """Restores the full state into `target`'s shapes and shardings, and the iterator state."""
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target.params),
            train=ocp.args.StandardRestore({"step": target.step, "opt_state": target.opt_state, "rng": target.rng}),
            data=IteratorStateRestore()))
        t = out["train"]
        return TrainState(step=t["step"], params=out["params"], opt_state=t["opt_state"], rng=t["rng"]), out["data"]

    def restore_params(self, step: int, target: dict) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]

    def restore_train(self, step: int, target: dict) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(train=ocp.args.StandardRestore(target)))["train"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


# ---------------------------------------------------------------------------------------------
# Resolved config in the workdir
# ---------------------------------------------------------------------------------------------

def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def write_stages(workdir: str, stages: list[tuple[str, Config]]) -> None:
    """Writes WORKDIR/config.json (process 0 only), atomically."""
    if jax.process_index() != 0:
        return
    storage.makedirs(workdir)
    storage.write_json(storage.join(workdir, CONFIG_FILE),
                       {"stages": [{"name": n, "config": config_to_dict(c)} for n, c in stages]})


def _parse_stages(d: dict) -> list[tuple[str, Config]]:
    if "stages" not in d:
        return [("params", config_lib.from_config_dict(config_lib.upgrade_recorded(d)))]
    return [(s["name"], config_lib.from_config_dict(config_lib.upgrade_recorded(s["config"]))) for s in d["stages"]]


def read_stages(workdir: str) -> list[tuple[str, Config]]:
    path = storage.join(storage.resolve(workdir), CONFIG_FILE)
    if not storage.isfile(path):
        raise FileNotFoundError(f"{path} not found: {workdir!r} is not a glm_jax training workdir "
                                f"(or params-only checkpoint)")
    return _parse_stages(storage.read_json(path))


def read_stages_if_any(workdir: str) -> list[tuple[str, Config]] | None:
    """The stages recorded in WORKDIR/config.json, or None for a new workdir."""
    path = storage.join(storage.resolve(workdir), CONFIG_FILE)
    return _parse_stages(storage.read_json(path)) if storage.isfile(path) else None


# ---------------------------------------------------------------------------------------------
# Params only: restore from any workdir on any mesh; params-only checkpoints
# ---------------------------------------------------------------------------------------------

def params_target(cfg: Config, mesh: jax.sharding.Mesh | None = None) -> dict:
    """Abstract params with shardings: by the rule table on `mesh`, or all on one local device."""
    abstract = spec.abstract_params(cfg.model)
    if mesh is None:
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), abstract)
    shard = sharding.tree_shardings(mesh, spec.param_specs(cfg.model))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shard)


@dataclasses.dataclass(frozen=True)
class _LazyLeaf:
    """A leaf `save_params` asks `read` for only while writing it (see _LazyLeafHandler)."""
    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    read: LeafReader


class _LazyLeafHandler(ocp.type_handlers.NumpyHandler):
    """Writes `_LazyLeaf`s exactly as the numpy leaves they stand for (same files, same metadata),
    stacked ones one layer at a time: no stacked leaf is ever whole in memory."""

    async def serialize(self, values, infos, args=None):
        if jax.process_index() != 0:  # host data, the same on every process: one writes it (as NumpyHandler)
            return [ocp.future.NoopFuture()]
        args = args or [ocp.SaveArgs()] * len(values)
        stores = []
        for leaf, info, arg in zip(values, infos, args):
            await info.await_path_creation()
            tspec = ocp.type_handlers.get_json_tspec_write(
                info, use_ocdbt=info.is_ocdbt_checkpoint, global_shape=leaf.shape, local_shape=leaf.shape,
                dtype=leaf.dtype, process_index=jax.process_index(), arg=arg)
            stores.append(await ts.open(tspec, create=True, open=True, context=info.ts_context))
        whole = [(leaf, t) for leaf, t in zip(values, stores) if not _stacked(leaf.path)]
        stacked = [(leaf, t) for leaf, t in zip(values, stores) if _stacked(leaf.path)]
        for leaf, t in whole:
            await t.write(leaf.read(leaf.path, None))
        # one layer of every leaf at a time, in parallel (stacks may differ in depth: dense prefix, MoE layers)
        for i in range(max((leaf.shape[0] for leaf, _ in stacked), default=0)):
            await asyncio.gather(*[t[i].write(leaf.read(leaf.path, i)) for leaf, t in stacked if i < leaf.shape[0]])
        return [ocp.future.NoopFuture()]  # written already


_REGISTRY = ocp.type_handlers.create_type_handler_registry(
    (_LazyLeaf, _LazyLeafHandler()),
    *((t, ocp.type_handlers.get_type_handler(t)) for t in (jax.Array, np.ndarray)))


def save_params(path: str, params: dict | LeafReader, cfg: Config) -> None:
    """Writes a params-only checkpoint (PATH/params + PATH/config.json) that `train.init_from`
    and `restore_params` read. Blocks until written.

    `params` is the tree of arrays, or a `LeafReader` (e.g. over a HuggingFace checkpoint) asked
    for each unstacked leaf and each layer of the stacked ones in turn, so peak memory stays
    near one layer."""
    path = storage.resolve(path)
    if callable(params):
        read = params
        params = jax.tree_util.tree_map_with_path(
            lambda kp, a: _LazyLeaf(_keys(kp), a.shape, np.dtype(a.dtype), read), spec.abstract_params(cfg.model))
    ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=_REGISTRY))
    ckptr.save(storage.join(path, "params"), args=ocp.args.PyTreeSave(params, save_args=_save_args(params)),
               force=True)
    if jax.process_index() == 0:
        storage.write_json(storage.join(path, CONFIG_FILE), config_to_dict(cfg))


def reference_checkpoint(cfg: Config, workdir: str, previous: str | None) -> tuple[str, int | None]:
    """(checkpoint, step; None = its latest) of a DPO stage's frozen reference: `dpo.reference` if
    set, else for a first stage (`previous` None) `train.init_from`, else stage `previous`'s last
    checkpoint in training workdir `workdir`."""
    if cfg.dpo.reference or previous is None:
        return cfg.dpo.reference or cfg.train.init_from, None
    ckpts = StageCheckpoints(stage_dir(workdir, previous), read_only=True)
    try:
        return workdir, ckpts.latest_step()
    finally:
        ckpts.close()


def is_params_checkpoint(path: str) -> bool:
    """Is `path` a params-only checkpoint (PATH/params + PATH/config.json, from `save_params`)?"""
    return storage.isdir(storage.join(storage.resolve(path), "params"))


def locate_params(workdir: str, step: int | None = None) -> tuple[str, Config]:
    """(directory of the params item, Config of the stage that wrote it) for a training workdir's
    latest finished checkpoint (or checkpoint `step`), or for a params-only checkpoint."""
    workdir = storage.resolve(workdir)
    if is_params_checkpoint(workdir):
        if step is not None:
            raise ValueError(f"{workdir} is a params-only checkpoint (one step); do not pass step={step}")
        return storage.join(workdir, "params"), read_stages(workdir)[-1][1]
    stages = read_stages(workdir)
    seen = []
    for name, cfg in reversed(stages):
        d = stage_dir(workdir, name)
        if not storage.isdir(d):
            continue
        ckpts = StageCheckpoints(d, read_only=True)
        try:
            steps = ckpts.all_steps()  # finished saves only
        finally:
            ckpts.close()
        seen += steps
        chosen = max(steps, default=None) if step is None else (step if step in steps else None)
        if chosen is not None:
            return storage.join(d, str(chosen), "params"), cfg
    what = "any checkpoint" if step is None else f"a checkpoint at step {step} (available: {sorted(seen)})"
    raise FileNotFoundError(f"{workdir} has no {what} yet")


def restore_params(workdir: str, step: int | None = None,
                   mesh: jax.sharding.Mesh | None = None) -> tuple[dict, Config]:
    """(params, Config) of a training workdir's latest checkpoint (or checkpoint `step`), or of a
    params-only checkpoint. Works while the run is still going (only finished saves count) and
    on any mesh: sharded by the rule table on `mesh`, or on one device when `mesh` is None. The
    Config is the one of the stage that wrote the checkpoint."""
    directory, cfg = locate_params(workdir, step)
    return ocp.StandardCheckpointer().restore(directory, params_target(cfg, mesh)), cfg


def param_reader(directory: str) -> LeafReader:
    """A `LeafReader` over a params item on disk (a directory from `locate_params`): reads what
    it is asked for and nothing else, on any host, whatever mesh wrote the checkpoint.

    Reads go by storage chunk along the layers axis: one layer for checkpoints this code writes;
    a chunk holding several layers is kept while they are asked for, for 3 leaves at most
    (THUDM's fused QKV reads q, k and v of one layer together)."""
    directory = epath.Path(directory)
    metadata = ocp.StandardCheckpointer().metadata(directory).item_metadata
    use_ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(directory)
    context = ocp.type_handlers.get_ts_context(use_ocdbt=use_ocdbt)
    stores: dict = {}
    blocks: dict = {}  # path -> (first layer, [n, ...] array) of the last multi-layer chunk read

    def store(path: Path):
        if path not in stores:
            leaf = metadata.tree
            for p in path:
                leaf = leaf[p]
            info = ocp.type_handlers.ParamInfo(name=leaf.name, parent_dir=directory, is_ocdbt_checkpoint=use_ocdbt,
                                               use_zarr3=metadata.use_zarr3, ts_context=context)
            tspec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=use_ocdbt)
            stores[path] = ts.open(tspec, open=True, context=context).result()
        return stores[path]

    def read(path: Path, layer: int | None = None) -> np.ndarray:
        t = store(path)
        n = t.chunk_layout.read_chunk.shape[0]
        if layer is None or n == 1:
            return (t if layer is None else t[layer]).read().result()
        start = layer - layer % n
        if blocks.get(path, (None,))[0] != start:
            blocks.pop(path, None)
            if len(blocks) >= 3:
                blocks.pop(next(iter(blocks)))
            blocks[path] = (start, t[start:start + n].read().result())
        return blocks[path][1][layer - start]

    return read
