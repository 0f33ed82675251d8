"""The two fitting engines: same atoms, same multi-resolution STFT objective.

- `ReferenceEngine` renders every atom in the time domain and takes the STFTs
  of the mix: simple and obviously correct, and slow.
- `FastEngine` builds the expected power spectrogram directly from the
  parameters (`splat.spectral`): no audio, no FFT of the mix in the loop.

An engine is built once per chunk of segments (a *region* of the file, which
may begin with the tails of atoms fitted earlier: the *background*) and maps
`AtomParams` of shape (segments, atoms), plus optionally each segment's
noise-floor levels (shape (segments, bands), see `splat.floor`), to the
scalar distance. `moving` (bool, shape (segments, atoms)) names the atoms whose
pitch motion is being fitted: they are modelled with moving partials even at a
fixed pitch, so that their glide and vibrato get gradients (None: the atoms
whose pitch moves).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from splat import loss, spectral, synth
from splat.params import AtomParams


@dataclass(frozen=True)
class Region:
    """A chunk of consecutive segments and the stretch of audio its loss covers.

    Attributes:
        start: First sample of the region (= first segment's start).
        n_samples: Samples the loss covers (segments plus a look-ahead).
        segment_starts: First sample of each segment, shape (segments,) as a tuple.
        n_segment: Samples per segment.
    """

    start: int
    n_samples: int
    segment_starts: tuple[int, ...]
    n_segment: int

    def segment_spans_s(self, n_file: int, sample_rate: int) -> list[tuple[float, float]]:
        """(start, end) of each segment in seconds; the last one ends at the file's end if sooner."""
        return [(s / sample_rate, min(s + self.n_segment, n_file) / sample_rate) for s in self.segment_starts]


@dataclass(frozen=True)
class ModelSpec:
    """Settings shared by every engine call (none is optimised)."""

    sample_rate: int
    envelope: str
    n_partials: int
    resolutions: tuple[spectral.Resolution, ...]
    grid_step: int

    @property
    def pad(self) -> int:
        """Half the longest FFT: context needed on each side of a region."""
        return max(r.n_fft for r in self.resolutions) // 2


class FastEngine:
    """Expected-spectrogram objective (see `splat.spectral`)."""

    def __init__(
        self,
        target: Tensor,
        region: Region,
        spec: ModelSpec,
        *,
        background: tuple[AtomParams, Tensor | None, Tensor] | None = None,
    ) -> None:
        """Prepare everything that does not depend on the parameters.

        Args:
            target: Normalised audio of the whole file, shape (samples,).
            region: The chunk to fit.
            spec: Model settings.
            background: Earlier segments whose tails reach into the region: their
                atoms (params of shape (segments, atoms)), floor levels (shape
                (segments, bands), or None) and starts in samples (shape (segments,));
                or None.
        """
        device = target.device
        self.spec = spec
        self.region = region
        # A segment's atoms are seen up to one segment past its end (or the region's end).
        n_window = min(2 * region.n_segment, region.start + region.n_samples - region.segment_starts[0])
        self.grid = spectral.Grid(n_window=n_window, step=spec.grid_step, pad=spec.pad)
        self.plan = spectral.Plan(self.grid, spec.resolutions, sample_rate=spec.sample_rate, device=device)
        self.target = loss.SpectralTarget(loss.region_powers(target, region.start, region.n_samples, spec.resolutions))
        starts = torch.tensor(region.segment_starts, device=device)
        self.n_file = target.numel()
        self.window_start_s = (starts.float() / spec.sample_rate).unsqueeze(-1)
        self.floor_at = self._floor_frames(starts)
        self.scatter = [self._indices(starts, res) for res in spec.resolutions]
        # One window that is exactly the region: its frames are the region's frames.
        self.direct = len(region.segment_starts) == 1 and n_window == region.n_samples and background is None
        # Earlier segments' tails in the region's frames, per resolution (None: nothing to add at every step).
        self.background: list[spectral.SplitPower] | None = None
        if background is not None:
            with torch.no_grad():
                params, floor_db, bg_starts = background
                window_start_s = (bg_starts.float() / spec.sample_rate).unsqueeze(-1)
                powers = self._powers(params, floor_db, window_start_s, self._floor_frames(bg_starts))
                self.background = self._place_all(powers, [self._indices(bg_starts, res) for res in spec.resolutions])

    def _indices(self, starts: Tensor, res: spectral.Resolution) -> tuple[Tensor, Tensor]:
        offsets = torch.div(starts - self.region.start, res.hop, rounding_mode="floor")
        return spectral.overlap_add_indices(offsets, self.grid.n_window // res.hop, self.region.n_samples // res.hop)

    def _place(self, windows: Tensor, src: Tensor, dst: Tensor, i: int) -> Tensor:
        flat = windows.reshape(-1, windows.shape[-1]).float()  # summed in float32 whatever the products gave
        # index_select, not flat[src]: its backward is an index_add, where indexing's is an
        # accumulating index_put (~20x slower on the CPU: a fifth of a multi-segment step).
        return torch.zeros_like(self.target.magnitudes[i]).index_add(0, dst, flat.index_select(0, src))

    def _place_all(
        self, powers: list[spectral.SplitPower], indices: list[tuple[Tensor, Tensor]]
    ) -> list[spectral.SplitPower]:
        """Every resolution's segment windows overlap-added into the region's frames."""
        return [
            p.map(lambda t, src=src, dst=dst, i=i: self._place(t, src, dst, i))
            for i, (p, (src, dst)) in enumerate(zip(powers, indices, strict=True))
        ]

    def _floor_frames(self, starts: Tensor) -> list[Tensor]:
        spans = spectral.FloorSpans.for_segments(starts, self.region.n_segment, self.n_file, self.spec.sample_rate)
        return spectral.floor_frames(spans, (starts.float() / self.spec.sample_rate).unsqueeze(-1), self.plan)

    def _powers(
        self,
        params: AtomParams,
        floor_db: Tensor | None,
        window_start_s: Tensor,
        floor_at: list[Tensor],
        moving: Tensor | None = None,
    ) -> list[spectral.SplitPower]:
        return spectral.expected_power(
            params,
            window_start_s,
            self.plan,
            envelope=self.spec.envelope,
            n_partials=self.spec.n_partials,
            floor_db=floor_db,
            floor_at=floor_at,
            moving=moving,
        )

    def split_powers(
        self,
        params: AtomParams,
        floor_db: Tensor | None = None,
        *,
        background: bool = True,
        moving: Tensor | None = None,
    ) -> list[spectral.SplitPower]:
        """Expected power spectrogram of the region per resolution, partials and noise, each (frames, bins).

        With `background=False`, only these atoms and floors (without earlier segments' tails).
        """
        powers = self._powers(params, floor_db, self.window_start_s, self.floor_at, moving)
        if self.direct:  # no background in the direct case
            # A view, not t[0]: indexing's backward writes the gradient into a zero-filled copy.
            return [p.map(lambda t: t.view(t.shape[1:])) for p in powers]
        placed = self._place_all(powers, self.scatter)
        if not background or self.background is None:
            return placed
        return [p + b for p, b in zip(placed, self.background, strict=True)]

    def model_powers(
        self, params: AtomParams, floor_db: Tensor | None = None, *, moving: Tensor | None = None
    ) -> list[Tensor]:
        """Expected power spectrogram of the region (with the background) per resolution, shape (frames, bins)."""
        return [p.total.float() for p in self.split_powers(params, floor_db, moving=moving)]

    def _distance(self, powers: list[spectral.SplitPower]) -> Tensor:
        return self.target.distance([p.tonal for p in powers], [p.noise for p in powers])

    def __call__(self, params: AtomParams, floor_db: Tensor | None = None, *, moving: Tensor | None = None) -> Tensor:
        """Multi-resolution STFT distance of the region (scalar), noise compared by its statistics (`loss`)."""
        return self._distance(self.split_powers(params, floor_db, moving=moving))

    def lead_distances(
        self,
        lead: AtomParams,
        rest: AtomParams,
        floor_db: Tensor | None = None,
        *,
        moving: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Distances of all atoms and of the `lead` atoms alone (with the floor and background), as scalars.

        The spectrogram is linear in the atoms, so the full model is the lead
        atoms' spectrogram plus the rest's: both distances for about the price of one.
        `moving` holds the lead's and the rest's masks, or is None.
        """
        lead_moving, rest_moving = moving if moving is not None else (None, None)
        lead_region = self.split_powers(lead, floor_db, moving=lead_moving)
        rest_region = self.split_powers(rest, background=False, moving=rest_moving)
        all_region = [a + r for a, r in zip(lead_region, rest_region, strict=True)]
        return self._distance(all_region), self._distance(lead_region)


class ReferenceEngine:
    """Time-domain objective: render every atom, sum, take the real STFTs."""

    def __init__(
        self,
        target: Tensor,
        region: Region,
        spec: ModelSpec,
        *,
        noise_seeds: Tensor,
        floor_seeds: Tensor | None = None,
        background_audio: Tensor | None = None,
        atoms_per_group: int = 8,
    ) -> None:
        """Args:
        target: Normalised audio of the whole file, shape (samples,).
        region: The chunk to fit.
        spec: Model settings.
        noise_seeds: Seeds of the atoms to fit, shape (segments, atoms).
        floor_seeds: Seeds of the segments' noise floors, shape (segments,), or None (no floor).
        background_audio: Earlier segments rendered over the whole file, shape (samples,), or None.
        atoms_per_group: Atoms rendered per checkpointed group (bounds memory).
        """
        self.spec = spec
        self.region = region
        self.n_file = target.numel()
        self.target = loss.SpectralTarget(loss.region_powers(target, region.start, region.n_samples, spec.resolutions))
        self.first = region.start - spec.pad  # sample of the rendered context's start
        self.n_context = region.n_samples + 2 * spec.pad
        n_noise = synth.noise_length(spec.sample_rate)
        flat = synth.white_noise(noise_seeds.flatten().cpu(), n_samples=n_noise, device=target.device)
        self.white = flat.reshape(1, -1, n_noise)
        # Each segment's floor (start_s, end_s, seed), rendered as `synth.render_atom_set` renders it.
        self.floors: list[tuple[float, float, int]] = []
        if floor_seeds is not None:
            spans = region.segment_spans_s(self.n_file, spec.sample_rate)
            self.floors = [(a, b, seed) for (a, b), seed in zip(spans, floor_seeds.tolist(), strict=True)]
        self.background = None
        if background_audio is not None:
            lo, hi = max(self.first, 0), min(self.first + self.n_context, background_audio.numel())
            bg = torch.zeros(self.n_context, device=target.device, dtype=target.dtype)
            bg[lo - self.first : hi - self.first] = background_audio[lo:hi]
            self.background = bg
        self.atoms_per_group = atoms_per_group

    def _render_group(self, white: Tensor, pitch_motion: bool, *fields: Tensor) -> Tensor:
        params = AtomParams(*fields)
        audio = synth.render_atoms(
            params,
            white,
            n_samples=self.n_context,
            sample_rate=self.spec.sample_rate,
            start=self.first,
            envelope=self.spec.envelope,
            n_partials=self.spec.n_partials,
            pitch_motion=pitch_motion,
        )
        return audio.sum(dim=(0, 1))

    def render(self, params: AtomParams, floor_db: Tensor | None = None, *, moving: Tensor | None = None) -> Tensor:
        """The region's audio with context: shape (n_samples + 2 * pad,).

        With any `moving` atom every atom's partials take the moving path (`synth.render_atoms`).
        """
        pitch_motion = moving is not None and bool(moving.any())
        flat = AtomParams.unstack(params.stack().reshape(1, -1, len(vars(params))))
        mix = torch.zeros(self.n_context, device=self.white.device, dtype=self.white.dtype)
        n = flat.time_s.shape[1]
        for lo in range(0, n, self.atoms_per_group):
            group = flat.select(slice(lo, lo + self.atoms_per_group))
            white = self.white[:, lo : lo + self.atoms_per_group]
            mix = mix + checkpoint(self._render_group, white, pitch_motion, *vars(group).values(), use_reentrant=False)
        if floor_db is not None:
            for j, (start_s, end_s, seed) in enumerate(self.floors):
                lo, audio = synth.render_floor_segment(
                    floor_db[j], start_s, end_s, seed, sample_rate=self.spec.sample_rate, n_file=self.n_file
                )
                a, b = max(lo, self.first), min(lo + audio.numel(), self.first + self.n_context)
                if b > a:
                    mix = mix + torch.nn.functional.pad(
                        audio[a - lo : b - lo], (a - self.first, self.first + self.n_context - b)
                    )
        if self.background is not None:
            mix = mix + self.background
        return mix

    def model_powers(
        self, params: AtomParams, floor_db: Tensor | None = None, *, moving: Tensor | None = None
    ) -> list[Tensor]:
        """Power spectrogram of the rendered region per resolution, shape (frames, bins)."""
        audio = self.render(params, floor_db, moving=moving)
        return loss.region_powers(audio, self.spec.pad, self.region.n_samples, self.spec.resolutions)

    def __call__(self, params: AtomParams, floor_db: Tensor | None = None, *, moving: Tensor | None = None) -> Tensor:
        """Multi-resolution STFT distance of the region (scalar)."""
        return self.target.distance(self.model_powers(params, floor_db, moving=moving))
