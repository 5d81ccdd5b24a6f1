"""Images: reading any picture file as RGB, resizing as the original's eval transform, the model input, and the
memory-mapped cache of decoded images (with where a data set's derived files go, cache_dir)."""
import hashlib
import os

import numpy as np
import torch
from PIL import Image, ImageOps

import util
from util import DataError


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


def cache_dir(data_dir):
    """Where the files derived from a data set go (image caches, the image check, a generated split): data_dir/cache,
    or, where data_dir cannot be written (a read-only or shared copy), a folder of its own in the user's cache
    (~/.cache/vqa_nia/<hash of the path>), said once."""
    own = os.path.join(data_dir, "cache")
    if writable(own):
        return own
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    user = os.path.join(base, "vqa_nia", hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:12])
    if not writable(user):
        raise DataError(f"neither {own} nor {user} can be written: make one of them writable (or set "
                        f"XDG_CACHE_HOME to a writable folder).")
    if user not in _SAID:
        _SAID.add(user)
        print(f"note: {data_dir} cannot be written, so its caches and generated split go to {user}")
    return user


_SAID = set()


def writable(directory):
    """Whether files can be created in directory (made if missing)."""
    try:
        util.try_writing_in(directory)
        return True
    except OSError:
        return False


def check_image(path):
    """'' for an image that decodes to an RGB picture, else what is wrong with it."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return "is an empty file"
            f.seek(max(0, size - 65536))
            tail = f.read()
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    try:
        with Image.open(path) as im:
            kind, width, height = im.format, im.width, im.height
            if width == 0 or height == 0:
                return "has no pixels"
            if kind == "JPEG" and b"\xff\xd9" not in tail:
                return "is truncated (no JPEG end marker)"
            if kind == "PNG" and b"IEND" not in tail[-64:]:
                return "is truncated (no PNG end chunk)"
            check_size(im)
            # a JPEG decodes every block at 1/8 size: corruption shows, in a fraction of the time
            im.draft("RGB", (64, 64))
            to_rgb(im)
    except ImageError as e:
        return str(e)
    except Image.DecompressionBombError as e:
        return f"is refused as a decompression bomb ({e}); shrink it if it is a real picture"
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, zlib.error) for broken files
        return f"is not a readable image ({type(e).__name__}: {e})"
    return ""


class ImageError(ValueError):
    """An image that opens but has no 8-bit RGB picture (say, 32-bit float pixels)."""


def to_rgb(im):
    """The picture as a viewer shows it, as 8-bit RGB: turned by its EXIF orientation (phone photos), transparency
    over white, 16-bit grey scaled to 8 bits, CMYK and palettes converted; ImageError for other kinds."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit grey (PNG), and 32-bit integers read as such
        im = Image.fromarray(np.clip(np.asarray(im, dtype=np.float64) / 257, 0, 255).astype(np.uint8))
    if im.mode == "P" and "transparency" in im.info or im.mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im).convert("RGB")
    if im.mode not in ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"):
        raise ImageError(f"has pixels of mode {im.mode}, which have no 8-bit RGB picture; save it as an 8-bit "
                         f"RGB JPEG or PNG")
    return im.convert("RGB")


MAX_PIXELS = 50_000_000  # 50 megapixels (an 8K photo is 35): a larger picture is refused from its header, undecoded


def check_size(im):
    """ImageError for a picture over MAX_PIXELS, from the size in its header (before any decoding: a small PNG can
    hold a picture whose decoding takes gigabytes)."""
    if im.width * im.height > MAX_PIXELS:
        raise ImageError(f"is {im.width} x {im.height} pixels ({im.width * im.height / 1e6:.0f} megapixels), over the "
                         f"{MAX_PIXELS / 1e6:.0f} megapixels this repo decodes; shrink it (the model reads it at a few "
                         f"hundred pixels)")


def read_image(path):
    """An image file as an RGB PIL image (to_rgb); any failure is a DataError naming the file."""
    try:
        with Image.open(path) as im:
            check_size(im)
            return to_rgb(im)
    except ImageError as e:
        raise DataError(f"{path} {e}.") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{path} is refused as a decompression bomb: {e} Shrink it if it is a real picture.") from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, zlib.error) for broken files
        raise DataError(f"{path} is not a readable image ({type(e).__name__}: {e}).") from None


def load_image(path, img_size):
    """One image as uint8 HWC, resized as the original's eval transform (bilinear, antialiased)."""
    return np.array(read_image(path).resize((img_size, img_size), Image.BILINEAR), dtype=np.uint8)


def to_model_input(images, device):
    """uint8 [B, H, W, 3] -> normalized float [B, 3, H, W] on device (channels_last memory, as it comes)."""
    images = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (images - mean) / std


CACHE_FORMAT = "rgb-v2"  # v2: EXIF orientation, transparency and 16-bit grey applied (to_rgb)


def report_other_caches(folder, current):
    """Says how much room the image caches of a data folder take that no run uses (other image lists, sizes or older
    formats; a cache is in use while a run directory that registered it exists), and removes unfinished ones of
    processes that are gone."""
    unused, size = [], 0
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.startswith("images_") or path == current or name.endswith(CACHE_USERS):
            continue
        if name.endswith(".tmp"):
            if not _writer_alive(name):
                os.remove(path)
            continue
        if not cache_users(path):
            unused.append(name)
            size += os.path.getsize(path)
    if unused:
        print(f"note: {folder} also holds {len(unused)} image cache(s) that no run uses, {size / 2**30:.2f} GiB, of "
              f"other image lists, sizes or an older format: {', '.join(unused)}; delete them if no other work needs "
              f"them (they are rebuilt when needed)")


CACHE_USERS = ".users"  # next to a cache: the run directories that read it, one per line


def cache_users(path):
    """The run directories, still there, that registered the cache at path."""
    try:
        with open(path + CACHE_USERS, encoding="utf-8") as f:
            return [line for line in f.read().splitlines() if os.path.isfile(os.path.join(line, util.CONFIG_FILE))]
    except OSError:
        return []


def register_cache_user(path, run_dir):
    """Notes that the run in run_dir reads the cache at path (a line appended, so concurrent runs don't collide)."""
    run_dir = os.path.abspath(run_dir)
    try:
        with open(path + CACHE_USERS, encoding="utf-8") as f:
            if run_dir in f.read().splitlines():
                return
    except OSError:
        pass
    with open(path + CACHE_USERS, "a", encoding="utf-8") as f:
        f.write(run_dir + "\n")


def _writer_alive(tmp_name):
    """Temporary files of versions before util.atomic_file carry their writer's pid: images_...npy.<pid>.tmp."""
    pid = tmp_name.rsplit(".", 2)[-2]
    if not (pid.isdigit() and len(pid) <= 7):
        return True  # a writer of this version: it removes its own file on failure
    try:
        os.kill(int(pid), 0)
        return True
    except OSError:
        return False


class ImageFiles:
    """The images of a data set by row: each decoded and resized from its file every time it is read, as the
    original pipeline does (--no-image_cache; for checking that the cache changes nothing)."""

    def __init__(self, data_dir, names, img_size):
        self.names = sorted(set(names))
        self.row = {name: i for i, name in enumerate(self.names)}
        self.paths = [os.path.join(data_dir, "image", name) for name in self.names]
        self.img_size = img_size

    def get(self, row):
        return load_image(self.paths[row], self.img_size)


class ImageCache(ImageFiles):
    """Every image of a data set decoded and resized once into a uint8 array on disk, memory-mapped.

    Reused across epochs, scripts and runs; rebuilt when the list of images, their sizes or modification
    times, or the image size change (the key is in the file name). user: the run directory that reads it (registered,
    so that the cache is not reported as one no run needs)."""

    def __init__(self, data_dir, names, img_size, num_workers=8, progress=True, user=None):
        super().__init__(data_dir, names, img_size)
        key = hashlib.sha1(f"{img_size} {CACHE_FORMAT}".encode())
        for name, path in zip(self.names, self.paths):
            try:
                stat = os.stat(path)
            except OSError as e:
                raise DataError(f"{path}: cannot read image ({e.strerror}); it is listed in {data_dir}/data.csv "
                                f"column image. Put the file there or remove its rows.") from None
            key.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        folder = cache_dir(data_dir)
        self.path = os.path.join(folder, f"images_{img_size}px_{key.hexdigest()[:16]}.npy")
        self.shape = (len(self.names), img_size, img_size, 3)
        built = not os.path.isfile(self.path)
        if built:
            self._build(num_workers, progress)
        if user is not None:
            register_cache_user(self.path, user)
        if built and progress:
            report_other_caches(folder, self.path)

        self._array = None  # opened lazily, so that DataLoader workers each map the file themselves

    def _build(self, num_workers, progress):
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        with util.atomic_file(self.path) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=self.shape)

            def decode(i):
                try:
                    array[i] = ImageFiles.get(self, i)  # decoded from the file
                except DataError as e:  # validation decoded it: it changed since, or is read by another process
                    raise DataError(f"{e} It passed the check before training; replace the file, or run again to "
                                    f"check it anew (with --skip_bad to leave its rows out).") from None

            # PIL releases the GIL while decoding, so threads use every core
            with ThreadPoolExecutor(max(1, num_workers)) as pool:
                list(tqdm(pool.map(decode, range(len(self.paths))), total=len(self.paths),
                          desc=f"caching images at {self.img_size}px", disable=not progress, dynamic_ncols=True))
            array.flush()
            array = None  # unmapped before the rename

    @property
    def array(self):
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def get(self, row):
        return np.array(self.array[row])

    def __getstate__(self):
        return {**self.__dict__, "_array": None}
