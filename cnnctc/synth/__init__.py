"""Realistic synthetic word images (``cnnctc render --style scene``), the way MJSynth, SynthText and
SynthTIGER draw them: words from a vocabulary, many fonts, colours, photo and texture backgrounds,
geometric distortion and camera degradation.

- :mod:`.text`: what is drawn (dictionary words, numbers, dates, prices, codes, or the user's
  vocabulary) and the label that goes with it.
- :mod:`.sources`: the fonts (installed or given) and background photographs it draws with.
- :mod:`.scene`: one image from (text, font, background, seed).

Every image is drawn from its own seed (the set's seed and the image's number), so a set is the
same bytes whatever the number of worker processes. No MindSpore import here.
"""
from .scene import SceneConfig, draw_scene
from .sources import Backgrounds, scene_fonts
from .text import TextSource, label_for

__all__ = ["SceneConfig", "draw_scene", "Backgrounds", "scene_fonts", "TextSource", "label_for"]
