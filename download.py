"""Get the data.

    python download.py            # the original image archive (Google Drive, 12.97 GB) into data/image/
    python download.py --sample   # the embedded synthetic sample into data/sample/ (offline, seconds)
"""
import argparse
import os
import socket
import sys
import zipfile

GDRIVE_FILE_ID = "1E4JBTFGuGiGVjjcBDU9091Ahg480StjT"
MANUAL_INSTRUCTIONS = f"""
이미지를 자동으로 받을 수 없습니다. g-drive에서 `image.zip` 파일을 직접 다운로드 하셔야 합니다 (12.97GB):
  https://drive.google.com/file/d/{GDRIVE_FILE_ID}/view?usp=sharing
받은 뒤 `python download.py --zip 경로/image.zip` 로 `data/image/` 에 풀거나, `image` 디렉토리를 `VQA_NIA/data/` 아래에 두세요.

The images could not be downloaded automatically. Download `image.zip` (12.97 GB) by hand from the link above,
then run `python download.py --zip PATH/image.zip` to unpack it into data/image/ (or put the `image`
directory under data/ yourself).
"""


def drive_reachable(timeout=3.0):
    try:
        socket.create_connection(("drive.google.com", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def unpack(zip_path, data_dir):
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(data_dir)


def download_images(data_dir):
    image_dir = os.path.join(data_dir, "image")
    if os.path.isdir(image_dir) and os.listdir(image_dir):
        print(f"{image_dir} already holds images; nothing to do.")
        return
    if not drive_reachable():
        sys.exit("error: Google Drive cannot be reached (offline?)." + MANUAL_INSTRUCTIONS)
    import gdown

    zip_path = os.path.join(data_dir, "image.zip")
    os.makedirs(data_dir, exist_ok=True)
    try:
        gdown.download(id=GDRIVE_FILE_ID, output=zip_path, quiet=False, resume=True)
    except Exception as e:  # gdown raises on the Drive quota page ("Too many users have viewed or downloaded")
        sys.exit(f"error: download failed: {e}" + MANUAL_INSTRUCTIONS)
    unpack(zip_path, data_dir)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="data", help="where data.csv and image/ live")
    p.add_argument("--sample", action="store_true", help="generate the synthetic sample data set instead")
    p.add_argument("--lang", default="ko", choices=["ko", "en"], help="language of the sample's questions")
    p.add_argument("--out", default=None, help="sample output directory (default data/sample, data/sample_en for --lang en)")
    p.add_argument("--n_images", type=int, default=3200, help="sample: number of images (4 questions each)")
    p.add_argument("--seed", type=int, default=0, help="sample: random seed")
    p.add_argument("--zip", default=None, help="unpack an image archive downloaded by hand")
    args = p.parse_args()
    if args.sample:
        import sample_data

        out = args.out or os.path.join(args.data_dir, "sample" if args.lang == "ko" else "sample_en")
        n = sample_data.generate(out, n_images=args.n_images, lang=args.lang, seed=args.seed)
        print(f"wrote {n} questions on {args.n_images} images to {out}/data.csv and {out}/image/")
    elif args.zip:
        unpack(args.zip, args.data_dir)
    else:
        download_images(args.data_dir)


if __name__ == "__main__":
    main()
