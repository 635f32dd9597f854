/**
 * Import mitoqp's results into the open image, or into every image of a project.
 *
 *   QuPath script -p project.qpproj -a /path/to/mitoqp/out -s import_mitoqp.groovy
 *
 * For each image, reads from the folder given with -a (without -a: the image's own folder) the files
 * `mitoqp run` wrote for it, named after the image file without its extension:
 *   <name>.geojson          figures (detections: "Mitotic figure", or "(atypical)" / "(normal)")
 *   <name>.hotspot.geojson  the hotspot window (annotation "Mitotic hotspot")
 *   <name>.density.geojson  figures per mm2 in ~250-um squares (tiles "Mitotic density")
 *   <name>.tissue.geojson   the analysed tissue (annotation "Tissue (mitoqp)")
 * Earlier mitoqp objects of the image (those classes) are removed first; everything else is kept, so a
 * re-import never doubles anything.
 */
import qupath.lib.objects.PathObject

def MITOQP = ['Mitotic figure', 'Mitotic figure (atypical)', 'Mitotic figure (normal)', 'Mitotic hotspot',
              'Mitotic density', 'Tissue (mitoqp)'] as Set
def server = getCurrentServer()
def image = new File(server.getURIs().iterator().next())
def stem = image.getName().replaceFirst(/(?i)\.ome\.tiff?$/, '').replaceFirst(/\.[^.]+$/, '')
def folder = (args != null && args.length > 0) ? new File(args[0]) : image.getParentFile()
def figures = new File(folder, stem + '.geojson')
if (!figures.exists()) {
    println "mitoqp: no ${figures} for ${getProjectEntry()?.getImageName() ?: stem}, skipped"
    return
}
def isMitoqp = { PathObject p -> p.getPathClass() != null && MITOQP.contains(p.getPathClass().toString()) }
removeObjects(getAllObjects().findAll(isMitoqp), true)
['.tissue.geojson', '.geojson', '.hotspot.geojson', '.density.geojson'].each { suffix ->
    def f = new File(folder, stem + suffix)
    if (f.exists())
        importObjectsFromFile(f.getAbsolutePath())
}
def n = getDetectionObjects().count { PathObject p -> p.isDetection() && !p.isTile() && isMitoqp(p) }
def atypical = getDetectionObjects().count { PathObject p -> p.getPathClass()?.toString() == 'Mitotic figure (atypical)' }
println "mitoqp: ${n} mitotic figures (${atypical} atypical) imported from ${folder}"
