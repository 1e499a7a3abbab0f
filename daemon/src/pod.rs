//! Finding a peer's Kubernetes pod from its `/proc/<pid>/cgroup`, also when
//! mechad runs in a pod with its own (private) cgroup namespace.
//!
//! The kubelet puts every pod's cgroup right under `/kubepods` (cgroupfs
//! driver) or `/kubepods.slice` (systemd driver), or under one QoS class
//! there (`burstable`, `besteffort`). Only a path anchored there names a pod:
//! a `kubepods` tree anywhere else — in a delegated subtree a user may create
//! cgroups in, such as `/user.slice/…/kubepods/pod<uid>` — names none.
//!
//! With cgroup v2, container runtimes give each container a private cgroup
//! namespace, and the kernel then prints every other process's cgroup
//! relative to the reader's own: a peer in another pod reads
//! `/../../kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/…`
//! to mechad. [`CgroupView`] knows how deep mechad's namespace root is in each
//! hierarchy (from the host's pid 1, which hostPID shows and which sits at the
//! root), so such a path can be placed in the hierarchy again.

use std::collections::HashMap;
use std::path::Path;

/// Where mechad's cgroup namespace root sits, per hierarchy, and whether
/// mechad may assume that it runs in a kubelet pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupView {
    /// Depth of the namespace root below the hierarchy's real root, by
    /// hierarchy id (the first field of a `/proc/<pid>/cgroup` line). Absent
    /// or 0: the daemon sees the host's paths.
    depths: HashMap<String, usize>,
    /// The operator says mechad runs in a kubelet pod (`MECHA_POD_UID`, set
    /// from the Downward API): its namespace root lies inside the kubelet's
    /// tree, so the ancestors a relative path climbs to are `/kubepods…`
    /// cgroups. Without it a relative path names no pod.
    in_pod: bool,
}

impl CgroupView {
    /// The view of a daemon whose host's pid 1 has cgroup text `init` (its
    /// `/proc/1/cgroup`, as this daemon reads it). Pid 1 sits at the root of
    /// every hierarchy (or in `/init.scope` right under it), so the number of
    /// `..` its path starts with is how deep the daemon's namespace root is.
    pub fn from_init(init: &str, in_pod: bool) -> Self {
        let depths = init
            .lines()
            .filter_map(|line| {
                let mut fields = line.splitn(3, ':');
                let id = fields.next()?;
                let path = fields.nth(1)?;
                Some((id.to_owned(), climbs(path).0))
            })
            .collect();
        Self { depths, in_pod }
    }

    /// The view of this daemon: `/proc/1/cgroup` under `proc_root`, and
    /// whether `MECHA_POD_UID` is set. Without a readable pid 1 (no hostPID)
    /// the view is the host's, which only an absolute path satisfies.
    pub fn read(proc_root: &Path) -> Self {
        let init = std::fs::read_to_string(proc_root.join("1").join("cgroup")).unwrap_or_default();
        let in_pod = std::env::var_os("MECHA_POD_UID").is_some_and(|v| !v.is_empty());
        Self::from_init(&init, in_pod)
    }

    /// The pod UID in a `/proc/<pid>/cgroup` text read by this daemon, if
    /// one of its lines places the process in a pod's cgroup.
    pub fn pod_uid(&self, cgroup: &str) -> Option<String> {
        cgroup.lines().find_map(|line| {
            // "hierarchy-id:controllers:path"; the path may hold ':' itself.
            let mut fields = line.splitn(3, ':');
            let id = fields.next()?;
            let path = fields.nth(1)?;
            let depth = self.depths.get(id).copied().unwrap_or(0);
            let (up, rest) = climbs(path);
            if depth == 0 || up == depth {
                // The path is the host's, or climbs to the real root: it is
                // absolute once the climb is dropped.
                return if up == depth { anchored(rest) } else { None };
            }
            // A path that does not climb is inside mechad's own container
            // (no pod peer lives there); one that climbs further than the
            // root cannot be.
            if up == 0 || up > depth || !self.in_pod {
                return None;
            }
            // The path climbs to mechad's ancestor at depth `depth - up`:
            // `/kubepods…` at depth 1, mechad's QoS class (or, for a
            // Guaranteed pod, mechad's own pod) at depth 2. Deeper
            // ancestors are inside mechad's own pod.
            match depth - up {
                1 => pod_below_root(rest.split('/')),
                2 => {
                    let first = rest.split('/').next()?;
                    pod_segment(first, first.ends_with(".slice"))
                }
                _ => None,
            }
        })
    }
}

/// How many `..` a cgroup path starts with, and the rest of it (no leading
/// `/`).
fn climbs(path: &str) -> (usize, &str) {
    let mut rest = path.strip_prefix('/').unwrap_or(path);
    let mut up = 0;
    while let Some(after) = rest.strip_prefix("..") {
        match after.strip_prefix('/') {
            Some(next) => rest = next,
            None if after.is_empty() => rest = after,
            None => break,
        }
        up += 1;
    }
    (up, rest)
}

/// The pod of an absolute path (given without its leading `/`) anchored at
/// `/kubepods` or `/kubepods.slice`.
fn anchored(path: &str) -> Option<String> {
    let mut segments = path.split('/');
    match segments.next()? {
        "kubepods" | "kubepods.slice" => pod_below_root(segments),
        _ => None,
    }
}

/// The pod named by the segments below `/kubepods[.slice]`: the pod's cgroup
/// right there, or under one QoS class.
fn pod_below_root<'a>(mut segments: impl Iterator<Item = &'a str>) -> Option<String> {
    let first = segments.next()?;
    let systemd = first.ends_with(".slice");
    if let Some(uid) = pod_segment(first, systemd) {
        return Some(uid);
    }
    let qos = if systemd {
        matches!(
            first,
            "kubepods-burstable.slice" | "kubepods-besteffort.slice"
        )
    } else {
        matches!(first, "burstable" | "besteffort")
    };
    if !qos {
        return None;
    }
    pod_segment(segments.next()?, systemd)
}

/// The pod UID of one cgroup directory name: `pod<uid>` (cgroupfs, dashes)
/// or `kubepods[-<qos>]-pod<uid>.slice` (systemd, underscores for dashes).
fn pod_segment(segment: &str, systemd: bool) -> Option<String> {
    let uid = if systemd {
        let name = segment.strip_prefix("kubepods-")?.strip_suffix(".slice")?;
        let at = name.find("pod")?;
        let qos = &name[..at];
        if !matches!(qos, "" | "burstable-" | "besteffort-") {
            return None;
        }
        name[at + 3..].replace('_', "-")
    } else {
        segment.strip_prefix("pod")?.to_string()
    };
    let valid = uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    valid.then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f7e3a52-4b1c-4d2e-9a8b-123456789abc";

    fn host() -> CgroupView {
        CgroupView::from_init("0::/init.scope\n", false)
    }

    /// mechad in a burstable pod with a private cgroup namespace (systemd
    /// driver): the host's pid 1, in `/init.scope`, reads four levels up.
    fn in_pod(in_pod: bool) -> CgroupView {
        CgroupView::from_init("0::/../../../../init.scope\n", in_pod)
    }

    fn systemd_pod(qos: &str) -> String {
        let uid = UID.replace('-', "_");
        match qos {
            "" => format!("kubepods-pod{uid}.slice"),
            q => format!("kubepods-{q}.slice/kubepods-{q}-pod{uid}.slice"),
        }
    }

    #[test]
    fn pod_uids_are_found_in_both_cgroup_drivers() {
        let view = host();
        let cgroupfs = format!("0::/kubepods/burstable/pod{UID}/abcdef\n");
        assert_eq!(view.pod_uid(&cgroupfs).as_deref(), Some(UID));
        let systemd = format!(
            "0::/kubepods.slice/{}/cri-containerd-1.scope\n",
            systemd_pod("burstable")
        );
        assert_eq!(view.pod_uid(&systemd).as_deref(), Some(UID));
        assert_eq!(view.pod_uid("0::/user.slice/user-1000.slice\n"), None);
        let guaranteed = format!("0::/kubepods/pod{UID}/abc\n");
        assert_eq!(view.pod_uid(&guaranteed).as_deref(), Some(UID));
    }

    #[test]
    fn a_kubepods_tree_outside_the_root_names_no_pod() {
        for forged in [
            format!("0::/user.slice/user-1000.slice/deleg-bob/kubepods/pod{UID}/x\n"),
            format!("0::/deleg-bob/kubepods/burstable/pod{UID}/x\n"),
            format!(
                "0::/system.slice/kubepods.slice/kubepods-pod{}.slice/x\n",
                UID.replace('-', "_")
            ),
            format!("0::/kubepods/burstable/nested/pod{UID}/x\n"),
            format!("0::/kubepods/evil/pod{UID}/x\n"),
        ] {
            assert_eq!(host().pod_uid(&forged), None, "{forged}");
            // Seen from a private namespace, climbing to the real root.
            let climbed = forged.replacen("0::/", "0::/../../../../", 1);
            assert_eq!(in_pod(true).pod_uid(&climbed), None, "{climbed}");
        }
    }

    #[test]
    fn the_depth_is_read_per_hierarchy_from_pid_1() {
        let view = CgroupView::from_init("4:pids:/../..\n1:cpu:/\n0::/../../../..\n", true);
        assert_eq!(view.depths.get("4"), Some(&2));
        assert_eq!(view.depths.get("1"), Some(&0));
        assert_eq!(view.depths.get("0"), Some(&4));
        assert_eq!(climbs("/.."), (1, ""));
        assert_eq!(climbs("/..x/y"), (0, "..x/y"));
    }

    #[test]
    fn relative_paths_from_a_private_namespace_find_other_pods() {
        let view = in_pod(true);
        // Another QoS class: climbs to /kubepods.slice.
        let other_class = format!(
            "0::/../../../{}/cri-containerd-9.scope\n",
            systemd_pod("besteffort")
        );
        assert_eq!(view.pod_uid(&other_class).as_deref(), Some(UID));
        // The same QoS class as mechad: climbs to that class only.
        let uid = UID.replace('-', "_");
        let same_class =
            format!("0::/../../kubepods-burstable-pod{uid}.slice/cri-containerd-9.scope\n");
        assert_eq!(view.pod_uid(&same_class).as_deref(), Some(UID));
        // A Guaranteed pod (cgroupfs driver) climbs to /kubepods.
        let cgroupfs = CgroupView::from_init("0::/../../../..\n", true);
        assert_eq!(
            cgroupfs
                .pod_uid(&format!("0::/../../../pod{UID}/c\n"))
                .as_deref(),
            Some(UID)
        );
    }

    #[test]
    fn relative_paths_name_no_pod_unless_mechad_runs_in_one() {
        let path = format!("0::/../../../{}/c\n", systemd_pod("besteffort"));
        assert_eq!(in_pod(false).pod_uid(&path), None);
        // A process inside mechad's own container, or in a sibling container
        // of mechad's pod, is no other pod.
        assert_eq!(in_pod(true).pod_uid("0::/sub\n"), None);
        assert_eq!(in_pod(true).pod_uid("0::/../sidecar.scope\n"), None);
        // Climbing past the root cannot happen; refuse it anyway.
        assert_eq!(
            in_pod(true).pod_uid(&format!("0::/../../../../../kubepods/pod{UID}/c\n")),
            None
        );
        // Within the same QoS class, only a pod's cgroup counts.
        assert_eq!(in_pod(true).pod_uid("0::/../../evil.slice/c\n"), None);
    }
}
