# twinfs %post: creates the data directory (root only). Does not enable or
# start the service: configure the node first (twinfs init), then
# `systemctl enable --now twinfs`.
install -d -m 0700 -o root -g root /var/lib/twinfs
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" = 1 ]; then
    echo "twinfs: installed, not started. Configure this node with 'twinfs init', then 'systemctl enable --now twinfs'."
fi
exit 0
