"""The two fitting engines: same atoms, same multi-resolution STFT objective.

- `ReferenceEngine` renders every atom in the time domain and takes the STFTs
  of the mix: simple and obviously correct, and slow.
- `FastEngine` builds the expected power spectrogram directly from the
  parameters (`splat.spectral`): no audio, no FFT of the mix in the loop.

An engine is built once per chunk of segments (a *region* of the file, which
may begin with the tails of atoms fitted earlier: the *background*) and maps
`AtomParams` of shape (segments, atoms), plus optionally each segment's
noise-floor levels (shape (segments, bands), see `splat.floor`), the room
(`splat.room`: it reverberates everything else) and each atom's partial series
(`modes`, indices into `splat.modes.MODES` of shape (segments, atoms); None: all
strings), to the scalar distance. `moving` (bool, shape (segments, atoms)) names
the atoms whose pitch motion is being fitted: they are modelled with moving
partials even at a fixed pitch, so that their glide and vibrato get gradients
(None: the atoms whose pitch moves).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from splat import loss, spectral, synth
from splat.params import AtomParams, RoomParams
from splat.room import RoomBands, band_noises, impulse_response, reverberate


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
        room_states: list[Tensor] | None = None,
        perceptual_weight: float = 0.0,
        background_modes: Tensor | None = None,
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
            room_states: With a room, how what sounded before the region rings into it:
                per resolution, the room's recursions at the region's first frame
                (`splat.room.RoomBands.carry`, shape (2, bins)); None for silence.
            perceptual_weight: Weight of the ERB-band term of the distance (`loss.SpectralTarget`).
            background_modes: The background atoms' series, shape (segments, atoms), or None (strings).
        """
        device = target.device
        self.spec = spec
        self.region = region
        # A segment's atoms are seen up to one segment past its end (or the region's end).
        n_window = min(2 * region.n_segment, region.start + region.n_samples - region.segment_starts[0])
        self.grid = spectral.Grid(n_window=n_window, step=spec.grid_step, pad=spec.pad)
        self.plan = spectral.Plan(self.grid, spec.resolutions, sample_rate=spec.sample_rate, device=device)
        self.target = loss.SpectralTarget(
            loss.region_powers(target, region.start, region.n_samples, spec.resolutions),
            sample_rate=spec.sample_rate,
            perceptual_weight=perceptual_weight,
        )
        starts = torch.tensor(region.segment_starts, device=device)
        self.n_file = target.numel()
        self.window_start_s = (starts.float() / spec.sample_rate).unsqueeze(-1)
        self.floor_at = self._floor_frames(starts)
        self.scatter = [self._indices(starts, res) for res in spec.resolutions]
        self.room_bands = [
            RoomBands.for_bins(bins_hz, hop=res.hop, sample_rate=spec.sample_rate)
            for bins_hz, res in zip(self.plan.bins_hz, spec.resolutions, strict=True)
        ]
        self.room_states = room_states
        # One window that is exactly the region: its frames are the region's frames.
        self.direct = len(region.segment_starts) == 1 and n_window == region.n_samples and background is None
        # Earlier segments' tails in the region's frames, per resolution (None: nothing to add at every step).
        self.background: list[spectral.SplitPower] | None = None
        if background is not None:
            with torch.no_grad():
                params, floor_db, bg_starts = background
                window_start_s = (bg_starts.float() / spec.sample_rate).unsqueeze(-1)
                floor_at = self._floor_frames(bg_starts)
                powers = self._powers(params, floor_db, window_start_s, floor_at, background_modes)
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
        modes: Tensor | None,
        *,
        bfloat16: bool = True,
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
            modes=modes,
            bfloat16=bfloat16,
            moving=moving,
        )

    def split_powers(
        self,
        params: AtomParams,
        floor_db: Tensor | None = None,
        *,
        background: bool = True,
        room: RoomParams | None = None,
        modes: Tensor | None = None,
        bfloat16: bool = True,
        moving: Tensor | None = None,
    ) -> list[spectral.SplitPower]:
        """Expected power spectrogram of the region per resolution, partials and noise, each (frames, bins).

        With `background=False`, only these atoms and floors (without earlier segments' tails, and
        without what rang in the room before the region). With a `room`, its reverberation of
        all that is added to the noise. `modes`: the atoms' series (None: strings); `bfloat16`
        as `spectral.expected_power` takes it.
        """
        powers = self._powers(
            params, floor_db, self.window_start_s, self.floor_at, modes, bfloat16=bfloat16, moving=moving
        )
        if self.direct:  # no background in the direct case
            # A view, not t[0]: indexing's backward writes the gradient into a zero-filled copy.
            region = [p.map(lambda t: t.view(t.shape[1:])) for p in powers]
        else:
            region = self._place_all(powers, self.scatter)
            if background and self.background is not None:
                region = [p + b for p, b in zip(region, self.background, strict=True)]
        if room is None:
            return region
        states = self.room_states if background and self.room_states is not None else [None] * len(region)
        return [
            spectral.SplitPower(p.tonal, p.noise.float() + bands.wet(p.total, room, state=state))
            for p, bands, state in zip(region, self.room_bands, states, strict=True)
        ]

    def room_states_at(
        self,
        n_samples: int,
        params: AtomParams,
        floor_db: Tensor | None,
        room: RoomParams,
        *,
        modes: Tensor | None = None,
        moving: Tensor | None = None,
    ) -> list[Tensor]:
        """The room's recursions `n_samples` into the region (where the next one starts), per resolution.

        They carry all that sounded up to there (these atoms, floors and background,
        and what rang in the room before the region) into the next region's `room_states`.
        """
        dry = self.split_powers(params, floor_db, modes=modes, moving=moving)
        states = self.room_states if self.room_states is not None else [None] * len(dry)
        return [
            bands.carry(p.total, room, n_frames=n_samples // bands.hop, state=state)
            for p, bands, state in zip(dry, self.room_bands, states, strict=True)
        ]

    def model_powers(
        self,
        params: AtomParams,
        floor_db: Tensor | None = None,
        room: RoomParams | None = None,
        *,
        modes: Tensor | None = None,
        moving: Tensor | None = None,
    ) -> list[Tensor]:
        """Expected power spectrogram of the region (with the background) per resolution, shape (frames, bins)."""
        return [p.total.float() for p in self.split_powers(params, floor_db, room=room, modes=modes, moving=moving)]

    def _distance(self, powers: list[spectral.SplitPower]) -> Tensor:
        return self.target.distance([p.tonal for p in powers], [p.noise for p in powers])

    def __call__(
        self,
        params: AtomParams,
        floor_db: Tensor | None = None,
        room: RoomParams | None = None,
        *,
        modes: Tensor | None = None,
        moving: Tensor | None = None,
    ) -> Tensor:
        """Multi-resolution STFT distance of the region (scalar), noise compared by its statistics (`loss`)."""
        return self._distance(self.split_powers(params, floor_db, room=room, modes=modes, moving=moving))

    def lead_distances(
        self,
        lead: AtomParams,
        rest: AtomParams,
        floor_db: Tensor | None = None,
        room: RoomParams | None = None,
        *,
        modes: tuple[Tensor, Tensor] | None = None,
        moving: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Distances of all atoms and of the `lead` atoms alone (with the floor, background and room), as scalars.

        The spectrogram is linear in the atoms, and so is the room's reverberation of
        it, so the full model is the lead atoms' spectrogram plus the rest's: both
        distances for about the price of one. `modes` holds the lead's and the rest's
        series (None: all strings), `moving` their masks (or is None).
        """
        lead_modes, rest_modes = (None, None) if modes is None else modes
        lead_moving, rest_moving = (None, None) if moving is None else moving
        lead_region = self.split_powers(lead, floor_db, room=room, modes=lead_modes, moving=lead_moving)
        rest_region = self.split_powers(rest, background=False, room=room, modes=rest_modes, moving=rest_moving)
        all_region = [a + r for a, r in zip(lead_region, rest_region, strict=True)]
        return self._distance(all_region), self._distance(lead_region)

    def replacement_distances(
        self,
        params: AtomParams,
        floor_db: Tensor | None,
        modes: Tensor | None,
        *,
        segments: Tensor,
        atoms: AtomParams,
        signs: Tensor,
        atom_modes: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """The distance now, and after each of many candidate changes made alone.

        Candidate c adds to segment `segments[c]` the atoms `atoms[c]`, each times its
        sign: -1 takes out an atom of `params` (as it is there), +1 puts a new one in, 0
        leaves it out. The spectrogram is linear in the atoms and each atom's is
        separable (frame powers times spectra, `splat.spectral`), so a candidate changes
        its segment's window by a few outer products, and the distance's two sums
        (`loss.error_sums`) change there alone: `loss.changed_error_sums` forms each
        candidate's sums in the window without forming its spectrogram. Both values come
        from the same sums. The current powers and the changes are float32 (a difference of
        spectrograms in bfloat16 would swamp a quiet remainder with a loud atom's rounding);
        still, where the atoms taken out held nearly all of a cell's power, the remainder is
        known only to ~1e-7 of it, so a candidate's distance is an estimate (to ~1e-4 of it),
        good for ranking candidates; `fitting.choose_series` lets the distance itself decide.
        Every pitch is taken as fixed here (moving partials are not separable): the estimates
        leave the pitch motion out, the distance that decides models it.

        Args:
            params, floor_db, modes: The current atoms (shape (segments, atoms)), floor levels
                and series, as `__call__` takes them.
            segments: Each candidate's segment index, shape (candidates,).
            atoms: Each candidate's atoms, shape (candidates, k).
            signs: Their signs (-1, 0 or +1), shape (candidates, k).
            atom_modes: Their series, shape (candidates, k).

        Returns:
            The current distance (scalar) and each candidate's, shape (candidates,), float64.
        """
        fixed = torch.zeros_like(params.time_s, dtype=torch.bool)
        powers = self.split_powers(params, floor_db, modes=modes, bfloat16=False, moving=fixed)
        current = [p.map(lambda t: t.float()) for p in powers]
        totals = [torch.stack(loss.error_sums(p.tonal, p.noise, y, log_y)) for p, y, log_y in self._targets(current)]
        distances = torch.zeros(segments.numel(), dtype=torch.float64, device=segments.device)
        for segment in segments.unique().tolist():
            chosen = torch.nonzero(segments == segment).flatten()
            part = AtomParams(**{name: value[chosen] for name, value in vars(atoms).items()})
            factors = self._change_factors(segment, part, signs[chosen], atom_modes[chosen])
            sums = []
            for i, ((now, y, log_y), total) in enumerate(zip(self._targets(current), totals, strict=True)):
                lo, hi, window = self._window_frames(segment, i)
                (frames_t, spectra_t), (frames_n, spectra_n) = factors[i]
                changes = ((frames_t[:, window], spectra_t), (frames_n[:, window], spectra_n))
                here = (now.tonal[lo:hi], now.noise[lo:hi], y[lo:hi], log_y[lo:hi])
                unchanged = tuple((f[:1, :, :0], s[:1, :0]) for f, s in changes)  # rank 0: the window as it is
                was, will = (loss.changed_error_sums(*here, *c) for c in (unchanged, changes))
                sums.append(total - was + will)  # (candidates, 2)
            distances[chosen] = self._combine(sums)
        return self._combine(totals), distances

    def _targets(self, powers: list[spectral.SplitPower]) -> list[tuple[spectral.SplitPower, Tensor, Tensor]]:
        return list(zip(powers, self.target.magnitudes, self.target.logs, strict=True))

    def _combine(self, sums: list[Tensor]) -> Tensor:
        """The distance from each resolution's two error sums (last axis; mean over resolutions, as `loss`)."""
        parts = [
            torch.sqrt(s[..., 0]) / norm + s[..., 1] / y.numel()
            for s, norm, y in zip(sums, self.target.norm_values, self.target.magnitudes, strict=True)
        ]
        return torch.stack(parts).mean(0)

    def _window_frames(self, segment: int, i: int) -> tuple[int, int, slice]:
        """Resolution i's region frames [lo, hi) that a segment's window covers, and where they sit in the window."""
        hop = self.spec.resolutions[i].hop
        first = (self.region.segment_starts[segment] - self.region.start) // hop
        lo, hi = max(first, 0), min(first + self.grid.n_window // hop, self.region.n_samples // hop)
        return lo, hi, slice(lo - first, hi - first)

    def _change_factors(
        self, segment: int, atoms: AtomParams, signs: Tensor, atom_modes: Tensor
    ) -> list[tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]]:
        """Per resolution, ((F, S) of the partials, (F, S) of the noise) of signed atoms in a segment's window.

        F holds the atoms' frame powers times their signs, shape (candidates, window frames,
        parts): the resonances' bodies and short parts for the partials, the bursts for the
        noise; S their spectra, shape (candidates, parts, bins).
        """
        n, k = signs.shape
        plan = self.plan
        start_s = self.window_start_s[segment : segment + 1].expand(n, 1)
        sr, envelope = self.spec.sample_rate, self.spec.envelope
        powers = spectral.branch_powers(atoms, plan.cell_s, start_s, grid=plan.grid, sample_rate=sr, envelope=envelope)
        signed = signs.to(powers.dtype).repeat(1, 3).unsqueeze(1)  # (candidates, 1, 3k): noise, bodies, shorts
        frames = [f.float() * signed for f in plan.frame_powers(powers)]
        noise = spectral.noise_spectra(atoms, plan)
        tonal = spectral.resonance_spectra(atoms, plan, n_partials=self.spec.n_partials, modes=atom_modes)
        return [
            ((f[..., k:], t.float()), (f[..., :k], z.float())) for f, t, z in zip(frames, tonal, noise, strict=True)
        ]


class ReferenceEngine:
    """Time-domain objective: render every atom, sum, take the real STFTs.

    Atoms are rendered in groups, each only from its earliest onset to where its
    atoms have all fallen `synth.TAIL_DB` below their peaks (`synth.support_s`), as
    `synth.render_atom_set` renders them: atoms given in onset order cost in
    proportion to their own length, not the region's.
    """

    def __init__(
        self,
        target: Tensor,
        region: Region,
        spec: ModelSpec,
        *,
        noise_seeds: Tensor,
        floor_seeds: Tensor | None = None,
        room_seed: int | None = None,
        background_audio: Tensor | None = None,
        atoms_per_group: int = 8,
        perceptual_weight: float = 0.0,
    ) -> None:
        """Args:
        target: Normalised audio of the whole file, shape (samples,).
        region: The chunk to fit.
        spec: Model settings.
        noise_seeds: Seeds of the atoms to fit, shape (segments, atoms).
        floor_seeds: Seeds of the segments' noise floors, shape (segments,), or None (no floor).
        room_seed: Seed of the room's noise, or None (no room).
        background_audio: Earlier segments' audio over the region's context (`context_span`), with
            their room, shape (n_samples + 2 * pad,), or None.
        atoms_per_group: Atoms rendered per checkpointed group (bounds memory).
        perceptual_weight: Weight of the ERB-band term of the distance (`loss.SpectralTarget`).
        """
        self.spec = spec
        self.region = region
        self.n_file = target.numel()
        self.target = loss.SpectralTarget(
            loss.region_powers(target, region.start, region.n_samples, spec.resolutions),
            sample_rate=spec.sample_rate,
            perceptual_weight=perceptual_weight,
        )
        self.first, end = self.context_span(region, spec)  # file samples of the rendered context
        self.n_context = end - self.first
        n_noise = synth.noise_length(spec.sample_rate)
        flat = synth.white_noise(noise_seeds.flatten().cpu(), n_samples=n_noise, device=target.device)
        self.white = flat.reshape(1, -1, n_noise)
        # Each segment's floor (start_s, end_s, seed), rendered as `synth.render_atom_set` renders it.
        self.floors: list[tuple[float, float, int]] = []
        if floor_seeds is not None:
            spans = region.segment_spans_s(self.n_file, spec.sample_rate)
            self.floors = [(a, b, seed) for (a, b), seed in zip(spans, floor_seeds.tolist(), strict=True)]
        # The room's band noises, as `synth.render_atom_set` draws them.
        self.room_noises = None
        if room_seed is not None:
            self.room_noises = band_noises(room_seed, sample_rate=spec.sample_rate, device=target.device).float()
        self.background = background_audio
        self.atoms_per_group = atoms_per_group

    @staticmethod
    def context_span(region: Region, spec: ModelSpec) -> tuple[int, int]:
        """File samples [first, end) the engine renders: the region and half the longest FFT on each side."""
        return region.start - spec.pad, region.start + region.n_samples + spec.pad

    def _render_group(
        self, white: Tensor, modes: Tensor | None, pitch_motion: bool, first: int, n_samples: int, *fields: Tensor
    ) -> Tensor:
        params = AtomParams(*fields)
        audio = synth.render_atoms(
            params,
            white,
            n_samples=n_samples,
            sample_rate=self.spec.sample_rate,
            start=first,
            envelope=self.spec.envelope,
            n_partials=self.spec.n_partials,
            modes=modes,
            pitch_motion=pitch_motion,
        )
        return audio.sum(dim=(0, 1))

    def render(
        self,
        params: AtomParams,
        floor_db: Tensor | None = None,
        room: RoomParams | None = None,
        *,
        modes: Tensor | None = None,
        moving: Tensor | None = None,
    ) -> Tensor:
        """The region's audio with context: shape (n_samples + 2 * pad,).

        With a `room`, its reverberation of these atoms and floors is added (the
        background brings its own: it was rendered with the room). `modes`: the
        atoms' series (None: strings). With any `moving` atom every atom's partials
        take the moving path (`synth.render_atoms`).
        """
        pitch_motion = moving is not None and bool(moving.any())
        flat = AtomParams.unstack(params.stack().reshape(1, -1, len(vars(params))))
        flat_modes = None if modes is None else modes.reshape(1, -1)
        mix = torch.zeros(self.n_context, device=self.white.device, dtype=self.white.dtype)
        n = flat.time_s.shape[1]
        sr = self.spec.sample_rate
        with torch.no_grad():
            onsets = torch.floor(flat.time_s * sr).long().clamp(self.first, self.first + self.n_context)
            ends = torch.ceil((flat.time_s + synth.support_s(flat)) * sr).long() + 1
        for lo in range(0, n, self.atoms_per_group):
            group = flat.select(slice(lo, lo + self.atoms_per_group))
            white = self.white[:, lo : lo + self.atoms_per_group]
            # An atom is silent before its onset: render the group from its earliest one.
            first = max(int(onsets[0, lo : lo + self.atoms_per_group].min()), self.first)
            end = min(int(ends[0, lo : lo + self.atoms_per_group].max()), self.first + self.n_context)
            if end <= first:
                continue
            group_modes = None if flat_modes is None else flat_modes[:, lo : lo + self.atoms_per_group]
            audio = checkpoint(
                self._render_group,
                white,
                group_modes,
                pitch_motion,
                first,
                end - first,
                *vars(group).values(),
                use_reentrant=False,
            )
            mix = mix + torch.nn.functional.pad(audio, (first - self.first, self.first + self.n_context - end))
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
        if room is not None:
            assert self.room_noises is not None, "a room needs the engine built with its seed"
            ir = impulse_response(room, self.room_noises, sample_rate=self.spec.sample_rate, n_samples=self.n_context)
            mix = mix + reverberate(mix, ir)
        if self.background is not None:
            mix = mix + self.background
        return mix

    def model_powers(
        self,
        params: AtomParams,
        floor_db: Tensor | None = None,
        room: RoomParams | None = None,
        *,
        modes: Tensor | None = None,
        moving: Tensor | None = None,
    ) -> list[Tensor]:
        """Power spectrogram of the rendered region per resolution, shape (frames, bins)."""
        audio = self.render(params, floor_db, room, modes=modes, moving=moving)
        return loss.region_powers(audio, self.spec.pad, self.region.n_samples, self.spec.resolutions)

    def __call__(
        self,
        params: AtomParams,
        floor_db: Tensor | None = None,
        room: RoomParams | None = None,
        *,
        modes: Tensor | None = None,
        moving: Tensor | None = None,
    ) -> Tensor:
        """Multi-resolution STFT distance of the region (scalar)."""
        return self.target.distance(self.model_powers(params, floor_db, room, modes=modes, moving=moving))
