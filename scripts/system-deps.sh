#!/usr/bin/env bash
# Debian packages the speech/audio data scripts and tests use: espeak-ng (speech synthesis), pocketsphinx-testdata
# (LibriVox utterances with transcripts), alsa-utils (short real spoken clips); and chromium, the headless browser the
# web chat's test drives through playwright (never `playwright install`: no browser download). Installed only when
# missing, and only when we can (root with apt-get); otherwise say what is missing and go on - the tests that need
# them say so too.
set -u
need=()
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
[ -d /usr/share/pocketsphinx/test ] || [ -d /usr/share/pocketsphinx-testdata ] || need+=(pocketsphinx-testdata)
[ -d /usr/share/sounds/alsa ] || need+=(alsa-utils)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages: ${need[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
    || echo "warning: could not install ${need[*]}; the tests that need them will report it" >&2
else
  echo "note: missing Debian packages ${need[*]} (sudo apt-get install ${need[*]})" >&2
fi
exit 0
