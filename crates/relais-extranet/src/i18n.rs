//! Every string of the interface, in French (default) and English. Templates call
//! `t.s("key")`; a test checks that every key used in a template exists in both languages.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Fr,
    En,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::Fr => "fr",
            Lang::En => "en",
        }
    }

    /// From the `lang` cookie, else `Accept-Language`, else French.
    pub fn from_headers(headers: &http::HeaderMap) -> Lang {
        let cookie = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == "lang")
            .map(|(_, v)| v.to_owned());
        match cookie.as_deref() {
            Some("en") => return Lang::En,
            Some("fr") => return Lang::Fr,
            _ => {}
        }
        let accept = headers
            .get(http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let first = accept
            .split(',')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if first.starts_with("en") {
            Lang::En
        } else {
            Lang::Fr
        }
    }
}

/// The catalogue: (key, French, English).
pub const CATALOGUE: &[(&str, &str, &str)] = &[
    ("app.name", "Relais", "Relais"),
    ("nav.skip", "Aller au contenu", "Skip to content"),
    ("nav.main", "Navigation principale", "Main navigation"),
    ("nav.dashboard", "Tableau de bord", "Dashboard"),
    ("nav.audit", "Journal", "Audit log"),
    ("nav.logout", "Se déconnecter", "Sign out"),
    ("nav.org", "Organisation", "Organisation"),
    ("nav.switch", "Changer", "Switch"),
    ("nav.lang_other", "English", "Français"),
    ("nav.lang_other_code", "en", "fr"),
    ("login.title", "Connexion", "Sign in"),
    ("login.email", "Adresse e-mail", "E-mail address"),
    ("login.password", "Mot de passe", "Password"),
    (
        "login.totp",
        "Code à usage unique (si activé)",
        "One-time code (if enabled)",
    ),
    (
        "login.totp_hint",
        "6 chiffres affichés par votre application d'authentification",
        "6 digits shown by your authenticator app",
    ),
    ("login.submit", "Se connecter", "Sign in"),
    (
        "login.bad",
        "E-mail ou mot de passe incorrect.",
        "Wrong e-mail or password.",
    ),
    (
        "login.totp_required",
        "Saisissez le code à 6 chiffres de votre application.",
        "Enter the 6-digit code from your app.",
    ),
    (
        "login.bad_totp",
        "Code erroné ou déjà utilisé : attendez le suivant.",
        "Wrong or already used code: wait for the next one.",
    ),
    (
        "login.throttled",
        "Trop d'échecs : réessayez dans quelques minutes.",
        "Too many failures: try again in a few minutes.",
    ),
    (
        "totp.title",
        "Activer la double authentification",
        "Enable two-factor authentication",
    ),
    (
        "totp.intro",
        "Votre rôle exige un second facteur. Ajoutez ce compte dans votre application d'authentification (clé ci-dessous), puis saisissez le code affiché.",
        "Your role requires a second factor. Add this account to your authenticator app (key below), then enter the code it shows.",
    ),
    ("totp.key", "Clé", "Key"),
    ("totp.code", "Code affiché", "Code shown"),
    ("totp.submit", "Activer", "Enable"),
    (
        "totp.done",
        "Double authentification activée.",
        "Two-factor authentication enabled.",
    ),
    ("dash.title", "Tableau de bord", "Dashboard"),
    ("dash.sites", "Sites", "Sites"),
    (
        "dash.no_site",
        "Aucun site dans cette organisation.",
        "No site in this organisation.",
    ),
    ("dash.orgs", "Vos organisations", "Your organisations"),
    ("create.title", "Créer un site", "Create a site"),
    (
        "create.name",
        "Nom court du site (lettres, chiffres, tirets)",
        "Short site name (letters, digits, dashes)",
    ),
    ("create.host", "Nom de domaine servi", "Domain name served"),
    (
        "create.host_hint",
        "Ex. : www.exemple.gouv.fr",
        "E.g. www.example.gouv.fr",
    ),
    ("create.origin", "Adresse de l'origine", "Origin address"),
    (
        "create.origin_hint",
        "Le serveur qui produit le site, ex. : https://origine.exemple.gouv.fr",
        "The server that produces the site, e.g. https://origin.example.gouv.fr",
    ),
    (
        "create.submit",
        "Créer le site (brouillon)",
        "Create the site (draft)",
    ),
    (
        "create.done",
        "Site créé en brouillon : essayez-le en pré-production, puis publiez-le.",
        "Site created as a draft: try it on staging, then publish it.",
    ),
    ("nav.people", "Personnes et jetons", "People and tokens"),
    (
        "people.title",
        "Personnes et jetons d'API",
        "People and API tokens",
    ),
    ("people.members", "Personnes", "People"),
    ("people.email", "Adresse e-mail", "E-mail address"),
    ("people.name", "Nom", "Name"),
    ("people.role", "Rôle", "Role"),
    (
        "people.role.admin",
        "Administrateur (tout, y compris personnes et jetons)",
        "Administrator (everything, including people and tokens)",
    ),
    (
        "people.role.editor",
        "Éditeur (configuration et purge)",
        "Editor (configuration and purge)",
    ),
    (
        "people.role.viewer",
        "Lecteur (consultation)",
        "Viewer (read only)",
    ),
    ("people.totp", "Double authentification", "Two-factor"),
    ("people.yes", "oui", "yes"),
    ("people.no", "non", "no"),
    (
        "people.add",
        "Ajouter une personne ou changer son rôle",
        "Add a person or change their role",
    ),
    (
        "people.password",
        "Mot de passe initial (personne sans compte)",
        "Initial password (person without an account)",
    ),
    (
        "people.password_hint",
        "12 caractères au moins ; transmettez-le par un autre canal.",
        "At least 12 characters; pass it on through another channel.",
    ),
    ("people.submit", "Enregistrer", "Save"),
    ("people.remove", "Retirer", "Remove"),
    ("people.saved", "Rôle enregistré.", "Role saved."),
    (
        "people.removed",
        "Personne retirée de l'organisation.",
        "Person removed from the organisation.",
    ),
    ("tokens.title", "Jetons d'API", "API tokens"),
    (
        "tokens.intro",
        "Pour un outil de publication qui purge après chaque mise en ligne, par exemple. Le secret n'est affiché qu'une fois.",
        "For a publishing system that purges after each publication, for instance. The secret is shown once.",
    ),
    ("tokens.none", "Aucun jeton.", "No token."),
    ("tokens.name", "Nom", "Name"),
    ("tokens.scope", "Portée", "Scope"),
    ("tokens.scope.read", "Lecture", "Read"),
    (
        "tokens.scope.purge",
        "Purge (et lecture)",
        "Purge (and read)",
    ),
    (
        "tokens.scope.config",
        "Configuration (et purge, lecture)",
        "Configuration (and purge, read)",
    ),
    (
        "tokens.days",
        "Expire dans (jours, vide : jamais)",
        "Expires in (days, empty: never)",
    ),
    ("tokens.expires", "Expiration", "Expires"),
    ("tokens.last_used", "Dernière utilisation", "Last used"),
    ("tokens.state", "État", "State"),
    ("tokens.active", "actif", "active"),
    ("tokens.revoked", "révoqué", "revoked"),
    ("tokens.never", "jamais", "never"),
    ("tokens.create", "Créer le jeton", "Create the token"),
    (
        "tokens.created",
        "Jeton créé. Copiez-le maintenant : il ne sera plus affiché.",
        "Token created. Copy it now: it will not be shown again.",
    ),
    ("tokens.revoke", "Révoquer", "Revoke"),
    ("tokens.revoked_done", "Jeton révoqué.", "Token revoked."),
    ("health.title", "État des origines", "Origin health"),
    ("health.ok", "Disponibles", "Up"),
    ("health.down", "indisponible vue de", "down as seen from"),
    (
        "dash.all_orgs",
        "Toutes les organisations",
        "All organisations",
    ),
    ("dash.sites_count", "Sites", "Sites"),
    ("sched.title", "Modes programmés", "Scheduled modes"),
    (
        "sched.intro",
        "Pour un site d'événement : le mode choisi s'applique entre ces deux instants, puis le site revient à son mode habituel.",
        "For an event site: the chosen mode applies between these two instants, then the site returns to its usual mode.",
    ),
    ("sched.none", "Aucune programmation.", "Nothing scheduled."),
    ("sched.mode", "Mode", "Mode"),
    ("sched.start", "Début (UTC)", "Start (UTC)"),
    ("sched.end", "Fin (UTC)", "End (UTC)"),
    ("sched.add", "Programmer", "Schedule"),
    ("sched.remove", "Supprimer", "Remove"),
    (
        "sched.done",
        "Programmation enregistrée.",
        "Schedule saved.",
    ),
    ("version.title", "Version", "Version"),
    (
        "version.changes",
        "Changements par rapport à la version précédente",
        "Changes from the previous version",
    ),
    ("version.first", "Première version.", "First version."),
    ("version.document", "Document complet", "Full document"),
    ("versions.see", "Voir", "View"),
    (
        "site.staging_open",
        "Ouvrir la pré-production",
        "Open staging",
    ),
    (
        "scope.platform",
        "défaut de la plateforme",
        "platform default",
    ),
    ("scope.site", "défaut du site", "site default"),
    ("scope.group", "groupe", "group"),
    ("scope.content_type", "type de contenu", "content type"),
    ("scope.dir", "répertoire", "directory"),
    ("scope.page", "page", "page"),
    (
        "explain.more_specific",
        "est plus spécifique que",
        "is more specific than",
    ),
    ("explain.rule", "règle", "rule"),
    (
        "explain.note.request_time",
        "décidé avant la réponse : seules les règles de page, de répertoire et du site s'appliquent",
        "decided before the response: only page, directory and default rules apply",
    ),
    (
        "explain.note.content_type",
        "des règles par type de contenu existent pour ce réglage : indiquez un type de contenu pour les voir",
        "content-type rules exist for this setting; give a content type to see them",
    ),
    ("setting.cache", "Mise en cache", "Caching"),
    ("setting.edge_ttl", "Durée en cache", "Time in cache"),
    (
        "setting.browser_ttl",
        "Durée dans le navigateur",
        "Time in the browser",
    ),
    (
        "setting.respect_origin",
        "Respect des en-têtes de l'origine",
        "Respect origin headers",
    ),
    (
        "setting.stale_while_revalidate",
        "Périmé pendant la revalidation",
        "Stale while revalidating",
    ),
    (
        "setting.stale_if_error",
        "Périmé si erreur",
        "Stale if error",
    ),
    (
        "setting.query",
        "Paramètres d'URL dans la clé",
        "Query string in the key",
    ),
    (
        "setting.key_headers",
        "En-têtes dans la clé",
        "Headers in the key",
    ),
    (
        "setting.key_cookies",
        "Cookies dans la clé",
        "Cookies in the key",
    ),
    (
        "origins.title",
        "Origines et certificat",
        "Origins and certificate",
    ),
    (
        "origins.urls",
        "Origines (une adresse par ligne, essayées dans l'ordre)",
        "Origins (one address per line, tried in order)",
    ),
    (
        "origins.submit",
        "Enregistrer les origines dans le brouillon",
        "Save the origins in the draft",
    ),
    (
        "origins.done",
        "Origines enregistrées dans le brouillon.",
        "Origins saved in the draft.",
    ),
    ("cert.current", "Certificat actuel", "Current certificate"),
    ("cert.none", "aucun", "none"),
    (
        "cert.present",
        "présent (la clé privée n'est jamais réaffichée)",
        "present (the private key is never shown again)",
    ),
    (
        "cert.cert",
        "Certificat et chaîne (PEM)",
        "Certificate and chain (PEM)",
    ),
    ("cert.key", "Clé privée (PEM)", "Private key (PEM)"),
    (
        "cert.submit",
        "Enregistrer le certificat dans le brouillon",
        "Save the certificate in the draft",
    ),
    (
        "cert.done",
        "Certificat enregistré dans le brouillon.",
        "Certificate saved in the draft.",
    ),
    ("logs.title", "Journaux d'accès", "Access logs"),
    (
        "logs.intro",
        "Un fichier par jour (UTC), tous les serveurs réunis, compressé ; son manifeste permet d'en vérifier l'intégrité. Également disponibles par SFTP.",
        "One file per day (UTC), every edge merged, compressed; its manifest lets you check its integrity. Also available by SFTP.",
    ),
    (
        "logs.none",
        "Aucun jour disponible pour l'instant.",
        "No day available yet.",
    ),
    ("logs.date", "Jour", "Day"),
    ("logs.lines", "Lignes", "Lines"),
    ("logs.edges", "Serveurs", "Edges"),
    ("logs.complete", "Complet", "Complete"),
    ("logs.download", "Télécharger", "Download"),
    ("stats.title", "Statistiques", "Statistics"),
    ("stats.from", "Du", "From"),
    ("stats.to", "au", "to"),
    ("stats.step", "Pas", "Step"),
    ("stats.step_auto", "Automatique", "Automatic"),
    (
        "stats.step_minute",
        "Minute (2 jours au plus)",
        "Minute (2 days at most)",
    ),
    ("stats.step_hour", "Heure", "Hour"),
    ("stats.step_day", "Jour", "Day"),
    ("stats.show", "Afficher", "Show"),
    (
        "stats.utc",
        "Dates et heures en temps universel (UTC). Les visiteurs sont estimés (adresse et navigateur, à ±2 % environ) ; aucune adresse n'est conservée dans les statistiques.",
        "Dates and times are UTC. Visitors are estimated (address and browser, about ±2 %); no address is kept in statistics.",
    ),
    ("stats.requests", "Requêtes", "Requests"),
    (
        "stats.visitors",
        "Visiteurs (estimation)",
        "Visitors (estimate)",
    ),
    ("stats.bytes", "Volume envoyé", "Data sent"),
    (
        "stats.hit_ratio",
        "Servies par le cache (requêtes)",
        "Served from cache (requests)",
    ),
    (
        "stats.byte_hit_ratio",
        "Servies par le cache (volume)",
        "Served from cache (data)",
    ),
    (
        "stats.under_2s",
        "Réponses en moins de 2 s",
        "Responses under 2 s",
    ),
    ("stats.errors", "Erreurs (5xx)", "Errors (5xx)"),
    ("stats.export", "Exporter", "Export"),
    (
        "stats.chart_requests",
        "Requêtes dans le temps",
        "Requests over time",
    ),
    (
        "stats.chart_bytes",
        "Volume envoyé dans le temps",
        "Data sent over time",
    ),
    (
        "stats.from_cache",
        "servi par le cache",
        "served from cache",
    ),
    ("stats.from_origin", "venu de l'origine", "from the origin"),
    ("stats.sites", "Par site", "By site"),
    ("stats.site", "Site", "Site"),
    ("stats.period", "Période", "Period"),
    (
        "stats.data_table",
        "Les chiffres en tableau",
        "The figures as a table",
    ),
    ("report.title", "Rapport hebdomadaire", "Weekly report"),
    (
        "report.intro",
        "Chaque lundi, les destinataires reçoivent par courriel les indicateurs choisis pour la semaine écoulée, site par site.",
        "Every Monday, the recipients receive the chosen metrics of the past week by e-mail, site by site.",
    ),
    (
        "report.recipients",
        "Destinataires (une adresse par ligne ; aucune : pas de rapport)",
        "Recipients (one address per line; none: no report)",
    ),
    ("report.metrics", "Indicateurs", "Metrics"),
    (
        "report.language",
        "Langue du courriel",
        "Language of the message",
    ),
    ("report.save", "Enregistrer le rapport", "Save the report"),
    (
        "report.saved",
        "Rapport hebdomadaire enregistré.",
        "Weekly report saved.",
    ),
    ("metric.requests", "Requêtes", "Requests"),
    (
        "metric.visitors",
        "Visiteurs (estimation)",
        "Visitors (estimate)",
    ),
    ("metric.bytes_sent", "Volume envoyé", "Data sent"),
    (
        "metric.hit_ratio",
        "Taux de succès du cache (requêtes)",
        "Cache hit ratio (requests)",
    ),
    (
        "metric.byte_hit_ratio",
        "Taux de succès du cache (volume)",
        "Cache hit ratio (data)",
    ),
    (
        "metric.under_2s",
        "Réponses en moins de 2 s",
        "Responses under 2 s",
    ),
    ("metric.errors", "Erreurs (5xx)", "Errors (5xx)"),
    ("metric.status", "Codes de réponse", "Status codes"),
    ("nav.stats", "Statistiques", "Statistics"),
    (
        "keys.title",
        "Clés SSH (accès SFTP aux journaux)",
        "SSH keys (SFTP access to logs)",
    ),
    ("keys.none", "Aucune clé.", "No key."),
    ("keys.name", "Nom", "Name"),
    ("keys.fingerprint", "Empreinte", "Fingerprint"),
    (
        "keys.key",
        "Clé publique OpenSSH (une ligne, ex. ssh-ed25519 AAAA…)",
        "OpenSSH public key (one line, e.g. ssh-ed25519 AAAA…)",
    ),
    ("keys.add", "Ajouter la clé", "Add the key"),
    ("keys.remove", "Retirer", "Remove"),
    ("keys.added", "Clé ajoutée.", "Key added."),
    ("keys.removed", "Clé retirée.", "Key removed."),
    ("nav.keys", "Clés SSH", "SSH keys"),
    ("site.name", "Site", "Site"),
    ("site.hosts", "Domaines", "Domains"),
    ("site.mode", "Mode", "Mode"),
    ("site.version", "Version publiée", "Published version"),
    ("site.never", "jamais publiée", "never published"),
    (
        "site.draft_pending",
        "Brouillon non publié",
        "Unpublished draft",
    ),
    ("site.origins", "Origines", "Origins"),
    ("site.staging", "Pré-production", "Staging"),
    (
        "site.staging_help",
        "Le brouillon est servi sur ce nom d'hôte avant publication.",
        "The draft is served on this host name before it is published.",
    ),
    (
        "mode.active",
        "Actif (servi et mis en cache)",
        "Active (served and cached)",
    ),
    (
        "mode.bypass",
        "Contournement (servi, rien en cache)",
        "Bypass (served, nothing cached)",
    ),
    (
        "mode.maintenance",
        "Maintenance (page de maintenance, 503)",
        "Maintenance (maintenance page, 503)",
    ),
    (
        "mode.disabled",
        "Désactivé (non servi)",
        "Disabled (not served)",
    ),
    ("mode.title", "Changer le mode", "Switch mode"),
    (
        "mode.confirm",
        "Je confirme : le changement s'applique immédiatement à tous les visiteurs.",
        "I confirm: the change applies immediately to every visitor.",
    ),
    ("mode.submit", "Appliquer le mode", "Apply mode"),
    (
        "mode.need_confirm",
        "Cochez la confirmation pour changer le mode.",
        "Tick the confirmation to switch the mode.",
    ),
    ("mode.done", "Mode appliqué.", "Mode applied."),
    ("purge.title", "Purger le cache", "Purge the cache"),
    ("purge.kind", "Quoi", "What"),
    (
        "purge.kind.url",
        "Des pages (une adresse ou un chemin par ligne)",
        "Pages (one URL or path per line)",
    ),
    (
        "purge.kind.prefix",
        "Un répertoire (préfixe de chemin)",
        "A directory (path prefix)",
    ),
    (
        "purge.kind.tag",
        "Une étiquette (Surrogate-Key, Cache-Tag)",
        "A tag (Surrogate-Key, Cache-Tag)",
    ),
    ("purge.kind.all", "Tout le site", "The whole site"),
    ("purge.values", "Valeurs", "Values"),
    (
        "purge.values_hint",
        "Exemples : /actualites/article.html, https://www.exemple.gouv.fr/, /actualites/",
        "Examples: /news/article.html, https://www.example.gouv.fr/, /news/",
    ),
    (
        "purge.soft",
        "Purge douce : marquer périmé et revalider auprès de l'origine (au lieu de supprimer)",
        "Soft purge: mark stale and revalidate with the origin (instead of deleting)",
    ),
    ("purge.submit", "Purger", "Purge"),
    ("purge.receipt", "Accusé de purge", "Purge receipt"),
    (
        "purge.complete",
        "Purge appliquée sur tous les serveurs.",
        "Purge applied on every edge.",
    ),
    (
        "purge.pending",
        "Purge en cours d'application…",
        "Purge being applied…",
    ),
    ("purge.edge", "Serveur", "Edge"),
    ("purge.status", "État", "Status"),
    ("purge.latency", "Délai", "Latency"),
    ("purge.applied", "appliquée", "applied"),
    ("purge.waiting", "en attente", "pending"),
    ("purge.refresh", "Actualiser", "Refresh"),
    ("purge.back", "Retour au site", "Back to the site"),
    ("purge.recent", "Purges récentes", "Recent purges"),
    ("versions.title", "Versions", "Versions"),
    ("versions.version", "Version", "Version"),
    ("versions.author", "Auteur", "Author"),
    ("versions.date", "Date", "Date"),
    ("versions.comment", "Commentaire", "Comment"),
    (
        "versions.rollback",
        "Revenir à cette version",
        "Roll back to this version",
    ),
    ("versions.current", "en service", "live"),
    ("publish.title", "Publier le brouillon", "Publish the draft"),
    (
        "publish.diff",
        "Changements par rapport à la version en service",
        "Changes from the live version",
    ),
    (
        "publish.comment",
        "Commentaire (facultatif)",
        "Comment (optional)",
    ),
    ("publish.submit", "Publier", "Publish"),
    ("publish.done", "Brouillon publié.", "Draft published."),
    (
        "publish.nothing",
        "Le brouillon est identique à la version en service.",
        "The draft is the same as the live version.",
    ),
    (
        "rollback.done",
        "Version rétablie (publiée comme nouvelle version).",
        "Version restored (published as a new version).",
    ),
    ("rules.title", "Règles de cache", "Cache rules"),
    (
        "rules.intro",
        "La règle la plus spécifique l'emporte : page, puis répertoire, type de contenu, groupe, site. Les modifications vont dans le brouillon : essayez-les en pré-production, puis publiez.",
        "The most specific rule wins: page, then directory, content type, group, site. Changes go into the draft: try them on staging, then publish.",
    ),
    (
        "rules.none",
        "Aucune règle : les en-têtes de l'origine s'appliquent.",
        "No rule: the origin's headers apply.",
    ),
    ("rules.scope", "Portée", "Scope"),
    ("rules.settings", "Réglages", "Settings"),
    ("rules.delete", "Supprimer", "Delete"),
    ("rules.add", "Ajouter une règle", "Add a rule"),
    ("rules.scope_kind", "Type de portée", "Scope type"),
    ("rules.scope.default", "Tout le site", "Whole site"),
    (
        "rules.scope.group",
        "Groupe de types de contenu",
        "Content-type group",
    ),
    (
        "rules.scope.content_type",
        "Type de contenu (MIME)",
        "Content type (MIME)",
    ),
    ("rules.scope.dir", "Répertoire", "Directory"),
    ("rules.scope.page", "Page", "Page"),
    ("rules.scope_value", "Valeur de la portée", "Scope value"),
    (
        "rules.scope_value_hint",
        "Ex. : /actualites/ (répertoire), /index.html (page), images (groupe), image/png (type)",
        "E.g. /news/ (directory), /index.html (page), images (group), image/png (type)",
    ),
    ("rules.cache", "Mise en cache", "Caching"),
    ("rules.cache.inherit", "Hériter", "Inherit"),
    ("rules.cache.on", "Mettre en cache", "Cache"),
    ("rules.cache.off", "Ne pas mettre en cache", "Do not cache"),
    (
        "rules.edge_ttl",
        "Durée en cache (ex. 10m, 2h, 1d)",
        "Time in cache (e.g. 10m, 2h, 1d)",
    ),
    (
        "rules.browser_ttl",
        "Durée dans le navigateur (ex. 5m)",
        "Time in the browser (e.g. 5m)",
    ),
    ("rules.submit", "Ajouter au brouillon", "Add to the draft"),
    (
        "rules.added",
        "Règle ajoutée au brouillon.",
        "Rule added to the draft.",
    ),
    (
        "rules.deleted",
        "Règle retirée du brouillon.",
        "Rule removed from the draft.",
    ),
    (
        "explain.title",
        "Quelle règle s'applique ?",
        "Which rule applies?",
    ),
    ("explain.url", "Adresse ou chemin", "URL or path"),
    (
        "explain.content_type",
        "Type de contenu de la réponse (facultatif)",
        "Response content type (optional)",
    ),
    ("explain.submit", "Expliquer", "Explain"),
    ("explain.setting", "Réglage", "Setting"),
    ("explain.value", "Valeur", "Value"),
    ("explain.winner", "Règle retenue", "Winning rule"),
    ("explain.overridden", "Règles écartées", "Overridden rules"),
    ("explain.version", "Version expliquée", "Version explained"),
    ("explain.draft", "brouillon", "draft"),
    ("explain.published", "version en service", "live version"),
    ("audit.title", "Journal des actions", "Audit log"),
    ("audit.filter", "Filtrer par action", "Filter by action"),
    (
        "audit.filter_hint",
        "Ex. : site, purge, token, member",
        "E.g. site, purge, token, member",
    ),
    ("audit.apply", "Filtrer", "Filter"),
    ("audit.export", "Exporter", "Export"),
    ("audit.when", "Date", "When"),
    ("audit.who", "Qui", "Who"),
    ("audit.from", "Adresse", "From"),
    ("audit.action", "Action", "Action"),
    ("audit.target", "Objet", "Target"),
    ("audit.none", "Aucune entrée.", "No entry."),
    (
        "err.title",
        "Une erreur est survenue",
        "Something went wrong",
    ),
    (
        "err.not_found",
        "Cette page n'existe pas, ou vous n'y avez pas accès.",
        "This page does not exist, or you do not have access to it.",
    ),
    (
        "err.forbidden",
        "Votre rôle ne permet pas cette action. Demandez à un administrateur de votre organisation.",
        "Your role does not allow this. Ask an administrator of your organisation.",
    ),
    (
        "err.csrf",
        "Le formulaire a expiré. Rechargez la page et recommencez.",
        "The form has expired. Reload the page and try again.",
    ),
    (
        "err.internal",
        "Erreur de notre côté ; elle a été enregistrée. Réessayez dans un instant.",
        "An error on our side; it was logged. Try again in a moment.",
    ),
    (
        "err.back",
        "Retour au tableau de bord",
        "Back to the dashboard",
    ),
    (
        "err.fix",
        "Corrigez le champ signalé :",
        "Fix the field indicated:",
    ),
];

/// Translations for one request.
#[derive(Debug, Clone, Copy)]
pub struct Tr(pub Lang);

impl Tr {
    /// The string for `key`; the key itself when missing (a test prevents that).
    pub fn s(&self, key: &str) -> &'static str {
        match CATALOGUE.iter().find(|(k, _, _)| *k == key) {
            Some((_, fr, en)) => match self.0 {
                Lang::Fr => fr,
                Lang::En => en,
            },
            None => {
                tracing::warn!(key, "missing translation");
                "?"
            }
        }
    }

    pub fn lang(&self) -> &'static str {
        self.0.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `t.s("…")` in the templates and the page code names a catalogue entry with both
    /// languages; so does every key built from a setting name.
    #[test]
    fn every_template_string_is_translated() {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut used = 0;
        let files = std::fs::read_dir(format!("{root}/templates"))
            .expect("templates")
            .chain(std::fs::read_dir(format!("{root}/src")).expect("src"));
        for entry in files {
            let path = entry.expect("entry").path();
            if path.ends_with("i18n.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            for part in text.split("t.s(\"").skip(1) {
                let key = part.split('"').next().expect("key");
                used += 1;
                let found = CATALOGUE.iter().find(|(k, _, _)| *k == key);
                let (_, fr, en) =
                    found.unwrap_or_else(|| panic!("{}: missing key {key}", path.display()));
                assert!(!fr.is_empty() && !en.is_empty(), "{key}");
            }
        }
        assert!(used > 50, "only {used} strings found");
        for k in crate::pages::CATALOGUE_SETTING {
            let key = format!("setting.{k}");
            assert!(CATALOGUE.iter().any(|c| c.0 == key), "missing {key}");
        }
        let mut keys: Vec<_> = CATALOGUE.iter().map(|c| c.0).collect();
        keys.sort_unstable();
        let n = keys.len();
        keys.dedup();
        assert_eq!(n, keys.len(), "duplicate keys");
    }

    #[test]
    fn language_from_cookie_then_accept_language() {
        let mut h = http::HeaderMap::new();
        assert_eq!(Lang::from_headers(&h), Lang::Fr);
        h.insert(
            http::header::ACCEPT_LANGUAGE,
            "en-GB,en;q=0.9".parse().expect("v"),
        );
        assert_eq!(Lang::from_headers(&h), Lang::En);
        h.insert(http::header::COOKIE, "a=b; lang=fr".parse().expect("v"));
        assert_eq!(Lang::from_headers(&h), Lang::Fr);
    }
}
