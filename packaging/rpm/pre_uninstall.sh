# twinfs %preun: on erase (not upgrade), stop (a primary demotes: Apache
# stops, the VIP is released, the mount goes away) and disable the service.
if [ "$1" = 0 ] && command -v systemctl >/dev/null 2>&1; then
    if [ -d /run/systemd/system ] && systemctl is-active --quiet twinfs.service; then
        systemctl stop twinfs.service || :
    fi
    systemctl disable --quiet twinfs.service >/dev/null 2>&1 || :
fi
exit 0
