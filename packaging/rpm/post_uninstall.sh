# twinfs %postun: rpm keeps edited config files as .rpmsave and leaves a
# non-empty /var/lib/twinfs (this node's copy of the data) in place.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
fi
exit 0
