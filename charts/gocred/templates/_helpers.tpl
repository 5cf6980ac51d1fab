{{/* Chart name (app.kubernetes.io/name). */}}
{{- define "gocred.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name of every object. */}}
{{- define "gocred.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "gocred.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gocred.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gocred.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "gocred.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gocred
{{- end -}}

{{- define "gocred.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gocred.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gocred.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The in-cluster DNS name of the Service (a DNS name of the serving certificate). */}}
{{- define "gocred.serviceHost" -}}
{{- printf "%s.%s.svc" (include "gocred.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "gocred.publicUrl" -}}
{{- if .Values.publicUrl -}}
{{- .Values.publicUrl | trimSuffix "/" -}}
{{- else if eq (int .Values.service.port) 443 -}}
{{- printf "https://%s" (include "gocred.serviceHost" .) -}}
{{- else -}}
{{- printf "https://%s:%d" (include "gocred.serviceHost" .) (int .Values.service.port) -}}
{{- end -}}
{{- end -}}

{{/* Secret with tls.crt / tls.key (and ca.crt with cert-manager). */}}
{{- define "gocred.tlsSecretName" -}}
{{- if .Values.tls.certManager.enabled -}}
{{- printf "%s-tls" (include "gocred.fullname" .) -}}
{{- else -}}
{{- .Values.tls.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* Where the CA that signed the broker's certificate is mounted (for injected pods). */}}
{{- define "gocred.caFile" -}}
{{- if .Values.tls.certManager.enabled -}}
/etc/gocred/tls/ca.crt
{{- else -}}
/etc/gocred/ca/ca.crt
{{- end -}}
{{- end -}}

{{/*
The [[oidc.issuers]] entry the chart adds when the webhook is enabled and config.oidc.issuers has
no kind = "kubernetes" entry (YAML, read back with fromYaml).
*/}}
{{- define "gocred.kubernetesIssuer" -}}
{{- $k := .Values.webhook.kubernetesIssuer -}}
{{- $i := dict "name" $k.name "issuer" $k.issuer "kind" "kubernetes" "audiences" (list .Values.webhook.inject.tokenAudience) -}}
{{- if $k.discoveryUrl -}}
{{- $_ := set $i "discovery_url" $k.discoveryUrl -}}
{{- end -}}
{{- if $k.caConfigMap -}}
{{- $_ := set $i "ca_cert" (include "gocred.kubeRootCaFile" .) -}}
{{- end -}}
{{- toYaml $i -}}
{{- end -}}

{{/* Where webhook.kubernetesIssuer.caConfigMap (default kube-root-ca.crt) is mounted. */}}
{{- define "gocred.kubeRootCaFile" -}}
/etc/gocred/kube-root-ca/ca.crt
{{- end -}}

{{/* Is the CA of the cluster's service-account issuer mounted in the broker? */}}
{{- define "gocred.mountKubeRootCa" -}}
{{- if and .Values.webhook.enabled .Values.webhook.kubernetesIssuer.caConfigMap -}}true{{- end -}}
{{- end -}}

{{/*
The webhook's namespaceSelector: webhook.namespaceSelector (matchLabels and matchExpressions
kept as given) plus a requirement that is always there, whatever the values say: never the
control-plane namespaces nor the release namespace (a webhook with failurePolicy Fail there can
keep the cluster's own pods, or the broker itself, from starting).
*/}}
{{- define "gocred.webhookNamespaceSelector" -}}
{{- $sel := deepCopy (default (dict) .Values.webhook.namespaceSelector) -}}
{{- $never := list "kube-system" "kube-node-lease" "kube-public" .Release.Namespace | uniq -}}
{{- $req := dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" $never -}}
{{- $_ := set $sel "matchExpressions" (append (default (list) $sel.matchExpressions) $req) -}}
{{- if not $sel.matchLabels -}}
{{- $_ := unset $sel "matchLabels" -}}
{{- end -}}
{{- toYaml $sel -}}
{{- end -}}

{{- define "gocred.vaultAuthMount" -}}
{{- default .Values.vault.auth.method .Values.vault.auth.mount -}}
{{- end -}}

{{/* Does the broker log in to Vault with a projected service-account token? */}}
{{- define "gocred.vaultUsesSaToken" -}}
{{- if has .Values.vault.auth.method (list "kubernetes" "jwt") -}}true{{- end -}}
{{- end -}}

{{/* Fail early on combinations that cannot work. */}}
{{- define "gocred.validate" -}}
{{- if and (not .Values.tls.certManager.enabled) (not .Values.tls.existingSecret) -}}
{{- fail "TLS: set tls.certManager.enabled=true, or tls.existingSecret (a kubernetes.io/tls Secret) and tls.caBundle" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled .Values.tls.existingSecret -}}
{{- fail "TLS: tls.existingSecret is only used with tls.certManager.enabled=false" -}}
{{- end -}}
{{- if and (not .Values.tls.certManager.enabled) (not .Values.tls.caBundle) -}}
{{- fail "TLS: tls.caBundle (PEM of the CA that signed tls.existingSecret) is required without cert-manager" -}}
{{- end -}}
{{- if and .Values.vault.caCert.secretName .Values.vault.caCert.configMapName -}}
{{- fail "vault.caCert: set secretName or configMapName, not both" -}}
{{- end -}}
{{- if and (eq .Values.vault.auth.method "kubernetes") (not .Values.vault.auth.role) -}}
{{- fail "vault.auth.role is required with vault.auth.method=kubernetes" -}}
{{- end -}}
{{- /* The init container copies the helper binary into a memory-backed emptyDir, which counts
against its memory limit: below 64Mi it is OOM-killed. */ -}}
{{- with regexFind "(^|,)\\s*memory=[0-9.]+[A-Za-z]*" .Values.webhook.inject.initResources -}}
{{- $q := regexReplaceAll "^.*memory=" . "" -}}
{{- $n := regexFind "^[0-9.]+" $q -}}
{{- $unit := trimPrefix $n $q -}}
{{- $scale := dict "" 1.0 "k" 1000.0 "M" 1000000.0 "G" 1000000000.0 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 -}}
{{- if and (hasKey $scale $unit) (lt (mulf (float64 $n) (get $scale $unit)) 67108864.0) -}}
{{- fail (printf "webhook.inject.initResources: memory=%s is below 64Mi; the init container copies the helper binary into a memory-backed volume, which counts against its memory limit" $q) -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.vault.auth.method "approle") (or (not .Values.vault.auth.approle.roleId) (not .Values.vault.auth.approle.secretIdSecret.name)) -}}
{{- fail "vault.auth.approle.roleId and vault.auth.approle.secretIdSecret.name are required with vault.auth.method=approle" -}}
{{- end -}}
{{- end -}}

{{/*
The broker's gocred.toml: the pass-through `config` values plus the keys the chart manages
(listen address, TLS files, Vault, policy dir, webhook). Rendered with toToml, so every string
is escaped correctly.
*/}}
{{- define "gocred.configToml" -}}
{{- $c := deepCopy .Values.config -}}
{{- $server := default dict $c.server -}}
{{- $_ := set $server "listen" "0.0.0.0:8443" -}}
{{- $_ := set $server "public_url" (include "gocred.publicUrl" .) -}}
{{- $_ := set $server "tls" (dict "cert" "/etc/gocred/tls/tls.crt" "key" "/etc/gocred/tls/tls.key") -}}
{{- $_ := set $c "server" $server -}}
{{- $secrets := default dict $c.secrets -}}
{{- $_ := set $secrets "backend" "vault" -}}
{{- $_ := set $c "secrets" $secrets -}}
{{- $auth := dict "method" .Values.vault.auth.method "mount" (include "gocred.vaultAuthMount" .) -}}
{{- if include "gocred.vaultUsesSaToken" . -}}
{{- if .Values.vault.auth.role -}}
{{- $_ := set $auth "role" .Values.vault.auth.role -}}
{{- end -}}
{{- if .Values.vault.auth.tokenAudience -}}
{{- $_ := set $auth "jwt_file" "/var/run/secrets/gocred/vault/token" -}}
{{- else -}}
{{- $_ := set $auth "jwt_file" "/var/run/secrets/kubernetes.io/serviceaccount/token" -}}
{{- end -}}
{{- else -}}
{{- $_ := set $auth "role_id" .Values.vault.auth.approle.roleId -}}
{{- $_ := set $auth "secret_id_file" "/etc/gocred/vault-approle/secret-id" -}}
{{- end -}}
{{- $vault := dict "address" .Values.vault.address "kv_mount" .Values.vault.kvMount "timeout" .Values.vault.timeout "auth" $auth -}}
{{- if or .Values.vault.caCert.secretName .Values.vault.caCert.configMapName -}}
{{- $_ := set $vault "ca_cert" (printf "/etc/gocred/vault-ca/%s" .Values.vault.caCert.key) -}}
{{- end -}}
{{- $_ := set $c "vault" $vault -}}
{{- $_ := set $c "policy" (dict "dir" "/etc/gocred/policies") -}}
{{- if not (dig "oidc" "issuers" (list) $c) -}}
{{- $_ := unset $c "oidc" -}}
{{- end -}}
{{- if not $c.ssh -}}
{{- $_ := unset $c "ssh" -}}
{{- end -}}
{{- $ups := default (list) $c.upstreams -}}
{{- $hasPublic := false -}}
{{- range $ups -}}
{{- if .public -}}
{{- $hasPublic = true -}}
{{- end -}}
{{- end -}}
{{- if and .Values.publicProxy (not $hasPublic) -}}
{{- $ups = append $ups (dict "name" "public" "kind" "goproxy" "url" .Values.publicProxy "public" true) -}}
{{- end -}}
{{- $_ := set $c "upstreams" $ups -}}
{{- if not $c.upstreams -}}
{{- $_ := unset $c "upstreams" -}}
{{- end -}}
{{- $store := dict "dir" "/var/lib/gocred/store" "max_size" .Values.store.maxSize -}}
{{- with .Values.store.s3 -}}
{{- if .bucket -}}
{{- $s3 := dict "bucket" .bucket -}}
{{- range $k := list "endpoint" "region" "prefix" "credentials" -}}
{{- if index $.Values.store.s3 $k -}}{{- $_ := set $s3 $k (index $.Values.store.s3 $k) -}}{{- end -}}
{{- end -}}
{{- $_ := set $store "s3" $s3 -}}
{{- end -}}
{{- end -}}
{{- $_ := set $c "store" $store -}}
{{- $w := .Values.webhook.inject -}}
{{- if .Values.webhook.enabled -}}
{{- /* The broker refuses `[webhook] enabled = true` unless a kind = "kubernetes" issuer accepts
the injected pods' token audience: add the cluster's issuer when none is configured. */ -}}
{{- $issuers := dig "oidc" "issuers" (list) $c -}}
{{- $k8s := list -}}
{{- $accepting := list -}}
{{- range $issuers -}}
{{- if eq (toString .kind) "kubernetes" -}}
{{- $k8s = append $k8s .name -}}
{{- if has $w.tokenAudience (default (list) .audiences) -}}
{{- $accepting = append $accepting .name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not $k8s -}}
{{- $oidc := default (dict) $c.oidc -}}
{{- $_ := set $oidc "issuers" (append $issuers (include "gocred.kubernetesIssuer" . | fromYaml)) -}}
{{- $_ := set $c "oidc" $oidc -}}
{{- else if not $accepting -}}
{{- fail (printf "config.oidc.issuers: no kind=kubernetes issuer (%s) lists webhook.inject.tokenAudience %q in its audiences, so the broker would refuse every injected pod's token: add %q to its audiences (or remove it to get the chart's default issuer %q)" (join ", " $k8s) $w.tokenAudience $w.tokenAudience .Values.webhook.kubernetesIssuer.name) -}}
{{- end -}}
{{- end -}}
{{- if not .Values.webhook.enabled -}}
{{- $_ := set $c "webhook" (dict "enabled" false) -}}
{{- else -}}
{{- $webhook := dict "enabled" true "broker_url" (include "gocred.publicUrl" .) "ca_file" (include "gocred.caFile" .) -}}
{{- $_ := set $webhook "image" (default (include "gocred.image" .) $w.image) -}}
{{- if $w.modules -}}
{{- $_ := set $webhook "modules" $w.modules -}}
{{- end -}}
{{- $_ := set $webhook "mode" $w.mode -}}
{{- if $w.goproxyFallback -}}
{{- $_ := set $webhook "goproxy_fallback" $w.goproxyFallback -}}
{{- end -}}
{{- $_ := set $webhook "token_audience" $w.tokenAudience -}}
{{- $_ := set $webhook "token_expiration" $w.tokenExpiration -}}
{{- $_ := set $webhook "on_malformed" $w.onMalformed -}}
{{- if $w.initResources -}}
{{- $_ := set $webhook "init_resources" $w.initResources -}}
{{- end -}}
{{- $_ := set $c "webhook" $webhook -}}
{{- end -}}
{{- toToml $c -}}
{{- end -}}
